import AsyncHTTPClient
@testable import CustosBroker
import CustosEvidence
import CustosModel
import CustosPKI
import CustosRuntime
import CustosTestSupport
import Foundation
import Hummingbird
import NIOCore
import NIOSSL
import Synchronization
import Testing

/// Mutual TLS against a real HTTPS listener on loopback: a client certificate registered to a
/// user authenticates them; an unregistered one, or none, does not; one from another CA fails
/// the handshake; bearer tokens still work over the same listener.
@Suite("Mutual TLS", .timeLimit(.minutes(2)))
struct MutualTLSTests {
    /// A CA, a server certificate for 127.0.0.1, two client certificates from the CA and one
    /// from a CA the broker does not trust, made with stock openssl.
    struct Files {
        let dir: URL
        func path(_ name: String) -> String { dir.appendingPathComponent(name).path }
        func text(_ name: String) throws -> String { try String(contentsOfFile: path(name), encoding: .utf8) }

        init() throws {
            dir = FileManager.default.temporaryDirectory.appendingPathComponent(TestServices.unique("custos-mtls-"))
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            func openssl(_ args: [String]) throws {
                #expect(try runQuietly("/usr/bin/openssl", args, in: dir) == 0, "openssl \(args.joined(separator: " "))")
            }
            for ca in ["ca", "rogue-ca"] {
                try openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "\(ca).key", "-out", "\(ca).pem",
                             "-days", "2", "-subj", "/CN=Synthetic \(ca)", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"])
            }
            let leaves = [("server", "ca", "serverAuth", "subjectAltName=IP:127.0.0.1"), ("alice", "ca", "clientAuth", nil),
                          ("mallory", "ca", "clientAuth", nil), ("eve", "rogue-ca", "clientAuth", nil)]
            for (name, ca, usage, san) in leaves {
                try openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "\(name).key", "-out", "\(name).csr",
                             "-subj", "/CN=\(name)"])
                try "extendedKeyUsage=\(usage)\n\(san ?? "")\n".write(toFile: path("\(name).ext"), atomically: true, encoding: .utf8)
                try openssl(["x509", "-req", "-in", "\(name).csr", "-CA", "\(ca).pem", "-CAkey", "\(ca).key", "-CAcreateserial", "-days", "1",
                             "-extfile", "\(name).ext", "-out", "\(name).pem"])
            }
        }
    }

    func client(_ f: Files, as name: String?, followRedirects: Bool = true) throws -> HTTPClient {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(f.path("ca.pem")))
        if let name {
            tls.certificateChain = try NIOSSLCertificate.fromPEMFile(f.path("\(name).pem")).map { .certificate($0) }
            tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: f.path("\(name).key"), format: .pem))
        }
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls)
        if !followRedirects { configuration.redirectConfiguration = .disallow }
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    func me(_ http: HTTPClient, _ url: String, token: String? = nil) async throws -> (Int, String) {
        var request = HTTPClientRequest(url: url + "/v1/me")
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        let response = try await http.execute(request, timeout: .seconds(10))
        let body = try await response.body.collect(upTo: 1 << 20)
        return (Int(response.status.code), String(buffer: body))
    }

    @Test func aRegisteredClientCertificateNamesItsUser() async throws {
        let f = try Files()
        defer { try? FileManager.default.removeItem(at: f.dir) }
        try await TestServices.withStore { store, db, _ in
            let (_, token) = try await store.addUser(name: "alice", role: .investigator, by: .testAdmin)
            _ = try await store.addUser(name: "bob", role: .approver, by: .testAdmin)
            try await store.addUserCertificate(name: "alice", certificate: try f.text("alice.pem"), by: .testAdmin)
            await #expect { try await store.addUserCertificate(name: "bob", certificate: try f.text("alice.pem"), by: .testAdmin) } throws: {
                ($0 as? BrokerError)?.code == .conflict  // one certificate names one user
            }
            await #expect { try await store.addUserCertificate(name: "nobody", certificate: try f.text("mallory.pem"), by: .testAdmin) } throws: {
                ($0 as? BrokerError)?.code == .notFound
            }

            let tls = try brokerTLSConfiguration(certificateChain: try f.text("server.pem"), key: try f.text("server.key"), clientCAs: try f.text("ca.pem"))
            let address = Mutex<Int?>(nil)
            let app = Application(router: buildRouter(store: store, maxBodyBytes: 64 * 1024, logger: TestServices.logger), server: try brokerServer(tls: tls),
                                  configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                                  onServerRunning: { channel in address.withLock { $0 = channel.localAddress?.port } }, logger: TestServices.logger)
            let server = Task { try await app.runService() }
            defer { server.cancel() }
            var port: Int?
            while port == nil { try await Task.sleep(for: .milliseconds(10)); port = address.withLock { $0 } }
            let url = "https://127.0.0.1:\(port!)"

            let alice = try client(f, as: "alice"), mallory = try client(f, as: "mallory"), eve = try client(f, as: "eve"), anonymous = try client(f, as: nil)
            func checks() async throws {
                let (status, body) = try await me(alice, url)
                #expect(status == 200 && body.contains("\"name\":\"alice\"") && body.contains("investigator"))
                // Valid chain, but registered to nobody.
                let (malloryStatus, malloryBody) = try await me(mallory, url)
                #expect(malloryStatus == 401 && malloryBody.contains("not registered"))
                // No certificate and no token.
                #expect(try await me(anonymous, url).0 == 401)
                // A token still works over HTTPS, and wins over a certificate.
                #expect(try await me(anonymous, url, token: token).0 == 200)
                #expect(try await me(mallory, url, token: "not-a-token").0 == 401)
                // A certificate from a CA the broker does not trust: no connection at all.
                await #expect(throws: (any Error).self) { _ = try await me(eve, url) }
                // The CLI, with the certificate from the environment.
                let cli = try await run("custos", ["whoami", "--url", url], environment: [
                    "CUSTOS_CA_FILE": f.path("ca.pem"), "CUSTOS_CLIENT_CERTIFICATE": f.path("alice.pem"), "CUSTOS_CLIENT_KEY": f.path("alice.key"),
                ])
                #expect(cli.status == 0 && cli.stdout == "alice (investigator)", "custos whoami: \(cli.stderr)")
            }
            let outcome: Result<Void, any Error>
            do { try await checks(); outcome = .success(()) } catch { outcome = .failure(error) }
            for c in [alice, mallory, eve, anonymous] { try? await c.shutdown() }
            try outcome.get()

            let kinds = try await db.query("SELECT kind FROM custody_events WHERE kind = 'admin.user-certificate-added'").collect()
            #expect(kinds.count == 1)
        }
    }

    /// The portal's sign-in by certificate: the page offers it when the connection presents one;
    /// a registered certificate opens a session (a `Secure` cookie under HTTPS), an unregistered
    /// one is refused.
    @Test func thePortalSignsInByRegisteredCertificate() async throws {
        let f = try Files()
        defer { try? FileManager.default.removeItem(at: f.dir) }
        try await TestServices.withStore { store, db, _ in
            _ = try await store.addUser(name: "alice", role: .investigator, by: .testAdmin)
            try await store.addUserCertificate(name: "alice", certificate: try f.text("alice.pem"), by: .testAdmin)
            // Mallory's certificate names an outside witness: the API's custody routes only, never the portal.
            _ = try await store.registerWitness(name: "mallory", certificate: try f.text("mallory.pem"), by: .testAdmin)
            try await store.addUserCertificate(name: "mallory", certificate: try f.text("mallory.pem"), by: .testAdmin)
            let tls = try brokerTLSConfiguration(certificateChain: try f.text("server.pem"), key: try f.text("server.key"), clientCAs: try f.text("ca.pem"))
            let address = Mutex<Int?>(nil)
            let app = Application(router: buildRouter(store: store, maxBodyBytes: 64 * 1024, portal: PortalSettings(secureCookies: true), logger: TestServices.logger),
                                  server: try brokerServer(tls: tls), configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                                  onServerRunning: { channel in address.withLock { $0 = channel.localAddress?.port } }, logger: TestServices.logger)
            let server = Task { try await app.runService() }
            defer { server.cancel() }
            var port: Int?
            while port == nil { try await Task.sleep(for: .milliseconds(10)); port = address.withLock { $0 } }
            let url = "https://127.0.0.1:\(port!)"
            let alice = try client(f, as: "alice", followRedirects: false), mallory = try client(f, as: "mallory", followRedirects: false)
            func send(_ http: HTTPClient, _ path: String, cookie: String? = nil, form: String? = nil) async throws -> (Int, [String], String) {
                var request = HTTPClientRequest(url: url + path)
                if let cookie { request.headers.add(name: "Cookie", value: cookie) }
                if let form {
                    request.method = .POST
                    request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
                    request.body = .bytes(ByteBuffer(string: form))
                }
                let response = try await http.execute(request, timeout: .seconds(10))
                return (Int(response.status.code), response.headers["Set-Cookie"], String(buffer: try await response.body.collect(upTo: 1 << 20)))
            }
            func checks() async throws {
                for (http, expected) in [(alice, 303), (mallory, 403)] {
                    let (status, cookies, page) = try await send(http, "/portal/sign-in")
                    #expect(status == 200 && page.contains("/portal/sign-in/certificate"))
                    let signin = try #require(cookies.first { $0.hasPrefix("custos_signin=") })
                    #expect(signin.contains("Secure") && signin.contains("HttpOnly") && signin.contains("SameSite=Strict"))
                    let value = String(signin.split(separator: ";")[0])
                    let csrf = String(value.dropFirst("custos_signin=".count))
                    let (answer, set, _) = try await send(http, "/portal/sign-in/certificate", cookie: value, form: "_csrf=\(csrf)&next=%2Fportal%2F")
                    #expect(answer == expected)
                    guard expected == 303 else { continue }
                    let session = try #require(set.first { $0.hasPrefix("custos_session=") })
                    #expect(session.contains("Secure"))
                    let (home, _, dashboard) = try await send(http, "/portal/", cookie: String(session.split(separator: ";")[0]))
                    #expect(home == 200 && dashboard.contains("alice"))
                }
            }
            let outcome: Result<Void, any Error>
            do { try await checks(); outcome = .success(()) } catch { outcome = .failure(error) }
            for c in [alice, mallory] { try? await c.shutdown() }
            try outcome.get()
            let signedIn = try await db.query("SELECT entry FROM custody_events WHERE kind = 'user.signed-in'").collect()
            #expect(signedIn.count == 1)
        }
    }

    @Test func settingsGoTogether() async throws {
        let f = try Files()
        defer { try? FileManager.default.removeItem(at: f.dir) }
        #expect(throws: (any Error).self) { try brokerTLSConfiguration(certificateChain: "garbage", key: try f.text("server.key"), clientCAs: nil) }
        #expect(throws: (any Error).self) { try brokerTLSConfiguration(certificateChain: try f.text("server.pem"), key: "garbage", clientCAs: nil) }
        let reader = try await ConfigSource.reader(configFile: nil, environment: [
            "CUSTOS_DATABASE_URL": "postgres://x@h/d", "CUSTOS_KAFKA_BROKERS": "k:9092", "CUSTOS_SIGNING_KEY_FILE": "/k", "CUSTOS_TSA_TRUST_FILE": "/t",
            "CUSTOS_STORAGE_DIRECTORY": "/s", "CUSTOS_STORAGE_KEY_FILE": "/sk",
            "CUSTOS_CUSTODY_CERTIFICATE_FILE": "/c", "CUSTOS_CUSTODY_KEY_FILE": "/k", "CUSTOS_CUSTODY_TSA_URL": "http://tsa",
            "CUSTOS_HTTP_TLS_CLIENT_TRUST_FILE": f.path("ca.pem")])
        #expect { try BrokerConfiguration(reader: reader) } throws: { String(describing: $0).contains("http.tls.clientTrustFile") }
    }
}
