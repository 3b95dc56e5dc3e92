import CustosRuntime
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import NIOSSL

/// The HTTPS server's TLS settings: its certificate chain and key, and, for mutual TLS, the CAs
/// whose client certificates it verifies. A client certificate is optional (bearer tokens
/// still work), but one that is presented must verify, or the handshake fails.
public func brokerTLSConfiguration(certificateChain: String, key: String, clientCAs: String?) throws -> TLSConfiguration {
    let chain: [NIOSSLCertificate], privateKey: NIOSSLPrivateKey
    do { chain = try NIOSSLCertificate.fromPEMBytes(Array(certificateChain.utf8)) } catch {
        throw ConfigurationError(key: "http.tls.certificateFile", reason: "not PEM certificates")
    }
    do { privateKey = try NIOSSLPrivateKey(bytes: Array(key.utf8), format: .pem) } catch {
        throw ConfigurationError(key: "http.tls.keyFile", reason: "not a PEM private key")
    }
    guard !chain.isEmpty else { throw ConfigurationError(key: "http.tls.certificateFile", reason: "holds no certificate") }
    var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(privateKey))
    tls.minimumTLSVersion = .tlsv12
    if let clientCAs {
        let roots: [NIOSSLCertificate]
        do { roots = try NIOSSLCertificate.fromPEMBytes(Array(clientCAs.utf8)) } catch {
            throw ConfigurationError(key: "http.tls.clientTrustFile", reason: "not PEM certificates")
        }
        guard !roots.isEmpty else { throw ConfigurationError(key: "http.tls.clientTrustFile", reason: "holds no certificate") }
        tls.trustRoots = .certificates(roots)
        tls.certificateVerification = .optionalVerification
    }
    return tls
}

/// Plain HTTP/1.1, or HTTPS with `tls`.
public func brokerServer(tls: TLSConfiguration?) throws -> HTTPServerBuilder {
    try tls.map { try .tls(.http1(), tlsConfiguration: $0) } ?? .http1()
}
