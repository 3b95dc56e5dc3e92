@testable import CustosBroker
import CustosModel
import CustosTestSupport
import Foundation
import NIOSSL
import Testing

/// E-mail notifications through a real SMTP server on loopback (aiosmtpd, from the project's
/// Python environment), over STARTTLS with a certificate from a CA made here: who is told of
/// what, that nothing names a target or free text, and how soon a duty approver hears of an
/// emergency.
@Suite("E-mail notifications", .serialized, .timeLimit(.minutes(2)))
struct NotificationTests {
    /// An aiosmtpd server keeping every message in a maildir.
    final class SMTPServer: @unchecked Sendable {  // used from one test task at a time
        let process = Process()
        let port: Int
        let maildir: URL
        let log: URL

        init(tls: MutualTLSTests.Files?) throws {
            port = try Self.freePort()
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent(TestServices.unique("custos-smtp-"))
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            maildir = dir.appendingPathComponent("maildir")  // made by the server
            log = dir.appendingPathComponent("server.log")
            process.executableURL = TestServices.root.appendingPathComponent(".custos/python/bin/python")
            process.arguments = ["-m", "aiosmtpd", "-n", "-l", "127.0.0.1:\(port)", "-c", "aiosmtpd.handlers.Mailbox"]
                + (tls.map { ["--tlscert", $0.path("server.pem"), "--tlskey", $0.path("server.key")] } ?? []) + [maildir.path]
            _ = FileManager.default.createFile(atPath: log.path, contents: nil)
            process.standardOutput = try FileHandle(forWritingTo: log)
            process.standardError = try FileHandle(forWritingTo: log)
            try process.run()
        }

        static func freePort() throws -> Int {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
            _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
            return Int(UInt16(bigEndian: addr.sin_port))
        }

        /// Waits until the server takes connections.
        func ready() async throws {
            for _ in 0..<100 {
                let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                var addr = sockaddr_in()
                addr.sin_family = sa_family_t(AF_INET)
                addr.sin_port = in_port_t(UInt16(port).bigEndian)
                addr.sin_addr.s_addr = inet_addr("127.0.0.1")
                let ok = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } } == 0
                close(fd)
                if ok { return }
                try await Task.sleep(for: .milliseconds(100))
            }
            Issue.record("aiosmtpd did not start: \((try? String(contentsOf: log, encoding: .utf8)) ?? "")")
            throw CancellationError()
        }

        /// Every message received so far, as text.
        var messages: [String] {
            let dir = maildir.appendingPathComponent("new")
            let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
            return names.sorted().compactMap { try? String(contentsOf: dir.appendingPathComponent($0), encoding: .utf8) }
        }

        /// SIGKILL: the server is spawned with SIGTERM blocked, and keeps nothing worth a clean stop.
        func stop() {
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
    }

    @Test func eachPersonHearsWhatConcernsThemAndAnEmergencyWithinFiveSeconds() async throws {
        let files = try MutualTLSTests.Files()
        let server = try SMTPServer(tls: files)
        defer { server.stop() }
        try await server.ready()
        let pki = try TestPKI(signerName: "prov-a")
        try await TestServices.withStore { store, client, _ in
            let p = try await EmergencyTests.people(store, pki)
            let appr2 = try await store.addUser(name: "appr2", role: .approver, by: .testAdmin).0
            for (user, address) in [(p.inv, "inv@police.example"), (p.approver, "appr@police.example"), (appr2, "appr2@police.example"),
                                    (p.duty, "duty@police.example"), (p.reviewer, "rev@police.example")] {
                _ = try await store.setNotifications(API.SetNotifications(email: .some(address)), for: user)
            }
            // One approver wants only clock events: the submission does not reach them.
            let chosen = try await store.setNotifications(API.SetNotifications(events: ["clock.late"]), for: p.approver)
            #expect(chosen.events == ["clock.late"] && chosen.email == "appr@police.example")
            await #expect(throws: BrokerError.self) { try await store.setNotifications(API.SetNotifications(email: .some("a@b.c\r\nBcc: x@y.z")), for: p.inv) }
            await #expect(throws: BrokerError.self) { try await store.setNotifications(API.SetNotifications(events: ["everything"]), for: p.inv) }

            var smtp = SMTPSettings(host: "127.0.0.1", port: server.port, from: "custos@broker.example")
            smtp.trustRoots = try NIOSSLCertificate.fromPEMFile(files.path("ca.pem"))
            let notifier = WebhookNotifier(client: client, settings: WebhookSettings(), email: EmailSettings(smtp: smtp, link: "https://portal.example"),
                                           wakeup: Wakeup(), logger: TestServices.logger)
            let running = Task { try await notifier.run() }
            defer { running.cancel() }

            // An emergency: the duty approver's server has it within 5 s of the submission.
            let c = try await store.createCase(title: "Case", by: p.inv)
            let emergency = try await store.draft(EmergencyTests.emergencySpec(caseId: c.id), by: p.inv)
            try await store.submit(emergency, by: p.inv)
            let submitted = ContinuousClock.now  // committed: the submission is on record
            var mail: String?
            while mail == nil && ContinuousClock.now - submitted < .seconds(10) {
                mail = server.messages.first { $0.contains("To: duty@police.example") }
                if mail == nil { try await Task.sleep(for: .milliseconds(20)) }
            }
            let elapsed = ContinuousClock.now - submitted
            let duty = try #require(mail, "the duty approver got no e-mail in 10 s")
            #expect(elapsed < .seconds(5), "the emergency's e-mail took \(elapsed)")
            print("emergency submitted → duty approver's SMTP server: \(elapsed)")
            #expect(duty.contains("Subject: [Custos] EMERGENCY request \(String(emergency.lowercased.prefix(8))) awaits a duty approver"))
            #expect(duty.contains("Request:  \(emergency.lowercased)") && duty.contains("https://portal.example/requests/\(emergency.lowercased)"))
            // Never a target or the emergency's statement of facts.
            for message in server.messages {
                #expect(!message.contains("84912345678") && !message.contains("Kidnapping"))
            }

            // A normal request reaches the approvers who chose it, never its submitter.
            let normal = try await store.draft(BrokerAPITests.spec(caseId: c.id), by: p.inv)
            try await store.submit(normal, by: p.inv)
            try await store.approve(emergency, by: p.duty)  // and the reviewer hears the review is due
            let deadline = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < deadline {
                let all = server.messages
                if all.contains(where: { $0.contains("To: appr2@police.example") }) && all.contains(where: { $0.contains("To: rev@police.example") }) { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            let all = server.messages
            #expect(all.contains { $0.contains("To: appr2@police.example") && $0.contains("Request \(String(normal.lowercased.prefix(8))) awaits approval") })
            #expect(all.contains { $0.contains("To: rev@police.example") && $0.contains("awaits review") && $0.contains("Clock:    review")
                                   && $0.contains("Deadline:") })
            #expect(!all.contains { $0.contains("To: appr@police.example") })  // chose clock events only
            #expect(!all.contains { $0.contains("To: inv@police.example") })  // their own submissions
            #expect(!all.contains { $0.contains("To: duty@police.example") && $0.contains(normal.lowercased) })  // not an emergency
            // Each delivered once, recorded as delivered.
            var undelivered = -1
            let settle = ContinuousClock.now + .seconds(20)
            while undelivered != 0 && ContinuousClock.now < settle {
                undelivered = try await client.query("SELECT count(*) FROM notifications WHERE channel = 'email' AND delivered_at IS NULL",
                                                     logger: TestServices.logger).collect()[0].decode(Int.self)
                if undelivered != 0 { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(undelivered == 0)
            let queued = try await client.query("SELECT count(*) FROM notifications WHERE channel = 'email'", logger: TestServices.logger)
                .collect()[0].decode(Int.self)
            #expect(server.messages.count == queued)
        }
    }

    @Test func aServerWithoutStartTLSIsNotUsedUnlessOnLoopbackByChoice() async throws {
        let server = try SMTPServer(tls: nil)
        defer { server.stop() }
        try await server.ready()
        let mail = EMail(to: "someone@police.example", subject: "[Custos] test", body: "Request: 1\n.starts with a dot", messageId: "m1@custos")
        let required = SMTPSettings(host: "127.0.0.1", port: server.port, from: "custos@broker.example")
        await #expect(throws: SMTPError.self) { try await SMTPClient.send(mail, settings: required) }
        var plain = required
        plain.security = .none
        try await SMTPClient.send(mail, settings: plain)
        let got = try #require(server.messages.first)
        #expect(got.contains("Subject: [Custos] test") && got.contains("\n.starts with a dot"))  // dot-stuffing undone by the server
        // Nothing listens: a connection failure, which is worth retrying.
        var nowhere = plain
        nowhere.port = try SMTPServer.freePort()
        do {
            try await SMTPClient.send(mail, settings: nowhere)
            Issue.record("sent to a closed port")
        } catch let e as SMTPError {
            #expect(e.isTransient && e.stage == "connect")
        }
    }
}
