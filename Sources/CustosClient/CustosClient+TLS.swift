import AsyncHTTPClient
import NIOSSL
import Synchronization

/// The clients `httpClient(caFile:certificateFile:keyFile:)` made, kept for the life of the
/// process (an `HTTPClient` must be shut down before it is released; a command-line run
/// simply ends).
private let tlsClients = Mutex<[String: HTTPClient]>([:])

extension CustosClient {
    /// An HTTP client for a broker that serves HTTPS with a private CA (`caFile`) and/or asks
    /// for a TLS client certificate (`certificateFile` and `keyFile`, PEM: mutual TLS). It lives
    /// as long as the process: command-line use only.
    public static func httpClient(caFile: String?, certificateFile: String?, keyFile: String?) throws -> HTTPClient {
        let key = [caFile ?? "", certificateFile ?? "", keyFile ?? ""].joined(separator: "\u{0}")
        guard (certificateFile == nil) == (keyFile == nil) else {
            throw ClientError(reason: "a client certificate and its key go together")
        }
        var tls = TLSConfiguration.makeClientConfiguration()
        do {
            if let caFile { tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile)) }
            if let certificateFile, let keyFile {
                tls.certificateChain = try NIOSSLCertificate.fromPEMFile(certificateFile).map { .certificate($0) }
                tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyFile, format: .pem))
            }
        } catch {
            throw ClientError(reason: "cannot read the TLS files: \(error)")
        }
        return tlsClients.withLock { clients in
            if let known = clients[key] { return known }
            let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls))
            clients[key] = client
            return client
        }
    }
}
