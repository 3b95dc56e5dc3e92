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
    /// librdkafka before 2.2.0 mis-parses tagged fields in modern brokers' responses
    /// ("ApiVersionRequest failed: Local: Read underflow").
    public static let minimumVersion: Int32 = 0x0202_0000

    public static var versionString: String { String(cString: rd_kafka_version_str()) }

    /// Throws with what to install when the linked librdkafka is too old.
    public static func checkVersion() throws {
        guard rd_kafka_version() >= minimumVersion else {
            throw KafkaError(reason: "librdkafka \(versionString) is too old: Custos needs 2.2.0 or newer "
                + "(Debian 12 ships 2.0.2). Run ops/install, which builds 2.8.0 into /usr/local, or install librdkafka >= 2.2 yourself.")
        }
    }
}
