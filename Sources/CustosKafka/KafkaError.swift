import CRdKafka

/// An error from librdkafka or from this wrapper. `description` carries librdkafka's text,
/// which never contains payload bytes.
public struct KafkaError: Error, Sendable, CustomStringConvertible {
    public var code: Int32
    public var reason: String
    public var file: String
    public var line: Int

    public init(code: Int32 = -1, reason: String, file: String = #fileID, line: Int = #line) {
        self.code = code
        self.reason = reason
        self.file = file
        self.line = line
    }

    init(_ err: rd_kafka_resp_err_t, _ context: String, file: String = #fileID, line: Int = #line) {
        self.init(code: err.rawValue, reason: "\(context): \(String(cString: rd_kafka_err2str(err)))", file: file, line: line)
    }

    public var description: String { "Kafka error \(code): \(reason)" }
}

public enum LibRdKafka {
    /// The oldest librdkafka Custos runs on, as `rd_kafka_version()` encodes it (0xMMmmrrxx).
    ///
    /// - Before 2.2.0, librdkafka mis-parses tagged fields in modern brokers' responses
    ///   ("ApiVersionRequest failed: Local: Read underflow").
    /// - Before 2.10.0, a topic that comes back with a new topic id (KIP-516), as after a Kafka
    ///   that restarts without its topics, leaves a freed entry in the metadata cache, and the
    ///   client crashes with SIGSEGV (librdkafka #4964).
    /// - 2.10.0 itself can loop re-bootstrapping once every broker was down (librdkafka #5086).
    public static let minimumVersion: Int32 = 0x020A_0100

    /// `minimumVersion` as people write it.
    public static let minimumVersionString = "2.10.1"

    public static var versionString: String { String(cString: rd_kafka_version_str()) }

    /// Throws with what to install when the linked librdkafka is older than `minimumVersion`.
    public static func checkVersion() throws {
        guard rd_kafka_version() >= minimumVersion else {
            throw KafkaError(reason: "librdkafka \(versionString) is too old: Custos needs \(minimumVersionString) or newer "
                + "(Debian 12 ships 2.0.2, Debian 13 2.8.0). Run ops/install, which builds Debian 14's into /usr/local, "
                + "or install librdkafka >= \(minimumVersionString) yourself.")
        }
    }
}
