@testable import CustosBroker
import CustosCanonicalJSON
import CustosRuntime
import CustosEvidence
import CustosKafka
import CustosTestSupport
import CustosModel
import Foundation
import Synchronization
import PostgresNIO
import Testing

/// `custos-broker` and `custos-connector` as separate processes, driven through the `custos`
/// CLI, over the real Kafka and PostgreSQL.
@Suite("End-to-end exchange", .serialized, .timeLimit(.minutes(10)))
struct ExchangeEndToEndTests {
    static let synth = TestServices.binDirectory.appendingPathComponent("custos-synth").path

    func json(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    @Test func aRequestTravelsToTheProviderAndComesBackAsAVerifiedPackage() async throws {
        let d = try Deployment(adapter: [Self.synth, "--records-per-target", "300", "--out-of-scope", "7"])
        defer { d.stop() }
        // A category whose adapter fails, to see the provider's refusal.
        d.connectorConfig["adapters"] = ["default": ["command": [Self.synth, "--records-per-target", "300", "--out-of-scope", "7"]],
                                         "kyc_document": ["command": ["/bin/sh", "-c", "cat >/dev/null; echo broken >&2; exit 3"]],
                                         // Holds its request open until the test lets it go (no data then).
                                         "location": ["command": ["/bin/sh", "-c", "cat >/dev/null; while [ ! -e \(d.path("release")) ]; do sleep 0.1; done"]],
                                         // Records each preservation step it is asked to carry out, one line each.
                                         "preservation": ["command": ["/bin/sh", "-c", "cat >> \(d.path("preservation.log")); echo >> \(d.path("preservation.log"))"]]]
        try await d.setUp()
        try await d.startBroker()
        try await d.startConnector()

        let request = try await d.submitRequest()
        let own = try await d.cli(d.investigator, ["request", "approve", request])
        #expect(own.status != 0 && own.stderr.contains("403"))
        // The approver learns of it from their inbox and the list of submitted requests.
        #expect(try await d.cliOK(d.approver, ["inbox"]).contains("approve  normal"))
        #expect(try await d.cliOK(d.approver, ["request", "list", "--state", "submitted"]).contains(request))
        #expect(try json(try await d.cliOK(d.approver, ["inbox", "--json"]))["items"].map { "\($0)".contains(request) } == true)
        #expect(try await d.cliOK(d.investigator, ["case", "list", "--mine"]).contains("E2E case"))
        _ = try await d.cliOK(d.approver, ["request", "approve", request])
        let watched = try await d.cli(d.investigator, ["request", "status", request, "--watch", "--timeout", "120"])
        #expect(watched.status == 0, "status --watch: \(watched.stderr)\nbroker: \(d.broker!.output.suffix(2000))\nconnector: \(d.connector!.output.suffix(2000))")
        for state in ["submitted", "approved", "dispatched", "acknowledged", "in-progress", "delivered", "verified"] {
            #expect(watched.stdout.contains(state), "timeline lacks \(state)")
        }

        let view = try json(try await d.cliOK(d.investigator, ["request", "status", request, "--json"]))
        #expect(view["state"] as? String == "verified")
        let packages = try #require(view["packages"] as? [[String: Any]])
        #expect(packages.count == 1)
        let packageId = try #require(packages.first?["id"] as? String).lowercased()

        // The four criteria, as the investigator sees them: the synthetic adapter's records are
        // clean and in scope, and it declares their coverage, so all four pass.
        let shown = try await d.cliOK(d.investigator, ["package", "show", packageId])
        for line in ["criteria: ADMISSIBLE (600 records, 0 quarantined)", "đúng (correct): pass", "đủ (complete): pass",
                     "sạch (clean): pass", "sống (live): pass"] {
            #expect(shown.contains(line), "package show lacks \(line):\n\(shown)")
        }

        // The connector judged it the same way before sending, and tells its operator.
        let operatorView = try await run("custos-connector", ["status", "--config", d.path("connector.json")], environment: d.env)
        #expect(operatorView.stdout.contains("criteria: admissible"), "\(operatorView.stdout)")

        let out = d.path("downloads")
        let downloaded = try json(try await d.cliOK(d.investigator, ["download", packageId, "--out", out, "--quiet", "--json"]))
        let file = try #require(downloaded["path"] as? String)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: file))
        #expect(Digest.sha256Hex(bytes) == downloaded["sha256"] as? String)
        #expect(packages.first?["chunksRoot"] as? String == downloaded["chunksRoot"] as? String)
        // What the investigator holds is checked by stock openssl, with no Custos code.
        let base = "\(out)/\(packageId)"
        #expect(try openssl(["cms", "-verify", "-binary", "-inform", "DER", "-in", "\(base).manifest.p7s", "-content", "\(base).manifest.json",
                             "-CAfile", d.path("provider-ca.pem"), "-out", "/dev/null"]) == 0)
        #expect(try openssl(["ts", "-verify", "-in", "\(base).manifest.tsr", "-data", "\(base).manifest.p7s", "-CAfile", d.path("tsa-ca.pem")]) == 0)
        let lines = bytes.split(separator: UInt8(ascii: "\n"))
        #expect(lines.count == 600)  // 2 targets × 300; the 7 out-of-scope records were not sent
        #expect(lines.allSatisfy { line in
            let s = String(decoding: line, as: UTF8.self)
            return s.contains("+84912345678") || s.contains("+84987654321")
        })

        // Trust anchors, given apart from anything the broker sends.
        let trust = d.path("trust")
        try FileManager.default.createDirectory(atPath: trust, withIntermediateDirectories: true)
        for (from, to) in [("provider-ca.pem", "provider-ca.pem"), ("tsa-ca.pem", "tsa-ca.pem"), ("custody-ca.pem", "custody-ca.pem"), ("witness.pem", "witnesses.pem")] {
            try FileManager.default.copyItem(atPath: d.path(from), toPath: trust + "/" + to)
        }

        // An outside witness co-signs the log's checkpoint, after checking it; then the log grows
        // (the export), and the bundle proves its checkpoint extends the witnessed one.
        let witness = try await d.admin(["witnesses", "add", "procuracy", "--certificate", d.path("witness.pem")])
        let cosign = ["witness", "cosign", "--trust", trust, "--key", d.path("witness.key"), "--certificate", d.path("witness.pem"),
                      "--state", d.path("witness-state.json")]
        #expect(try await d.cliOK(witness, cosign).contains("co-signed checkpoint tests.custos/custody #"))
        #expect(try await d.cli(witness, ["request", "status", request]).stderr.contains("403"))  // a witness sees only the custody log
        let held = try json(String(decoding: try Data(contentsOf: URL(fileURLWithPath: d.path("witness-state.json"))), as: UTF8.self))
        #expect((held["cosignatures"] as? [[String: Any]])?.first?["witness"] as? String == "procuracy")

        // The export bundle verifies offline, custody included, and its README's openssl
        // commands pass as written.
        let bundle = d.path("bundle.tar")
        _ = try await d.cliOK(d.investigator, ["export", packageId, "--out", bundle, "--quiet"])
        let verified = try await run("custos", ["verify", bundle, "--trust", trust, "--json"], environment: d.env)
        #expect(verified.status == 0, "custos verify: \(verified.stdout)")
        let verifyReport = try json(verified.stdout)
        // The four criteria, judged again offline, agree with the broker's verdict, by name.
        let judged = try #require(verifyReport["criteria"] as? [String: Any])
        let named = (judged["criteria"] as? [String: [String: Any]] ?? [:]).mapValues { $0["name"] as? String }
        #expect(named == ["correct": "đúng", "complete": "đủ", "clean": "sạch", "live": "sống"])
        #expect((verifyReport["checks"] as? [String: Bool])?["four criteria judged again"] == true)
        #expect(verifyReport["outcome"] as? String == "valid" && verifyReport["signer"] as? String == d.provider)
        let custody = try #require(verifyReport["custody"] as? [String: Any])
        let kinds = (custody["events"] as? [String] ?? []).map { $0.split(separator: " ", omittingEmptySubsequences: true)[1] }
        for kind in ["request.drafted", "request.submitted", "request.approved", "request.dispatched", "request.acknowledged", "package.manifest-received",
                     "package.chunk-received", "package.completed", "package.verdict", "request.verified", "request.viewed", "package.downloaded",
                     "package.exported"] {
            #expect(kinds.contains(Substring(kind)), "the bundle's custody history lacks \(kind): \(kinds)")
        }
        // The bundle in CASE/UCO: case.jsonld conforms to the ontology (case-utils' case_validate,
        // offline) and custos verify found every hash in it to be the bundle's.
        #expect((verifyReport["checks"] as? [String: Bool])?["CASE/UCO graph (case.jsonld) agrees with the bundle"] == true)
        let graph: [UInt8] = try await offPool {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/tar")
            p.arguments = ["-xOf", bundle, "custos-\(packageId)/case.jsonld"]
            let out = Pipe()
            p.standardOutput = out
            try p.run()
            let bytes = Array(out.fileHandleForReading.readDataToEndOfFile())
            p.waitUntilExit()
            return bytes
        }
        #expect(String(decoding: graph, as: UTF8.self).contains("case-investigation:ProvenanceRecord"))
        let conformance = try await CASEValidate.check(graph)
        #expect(conformance == nil, "case_validate: \(conformance ?? "")")
        let witnesses = try #require(custody["witnesses"] as? [[String: Any]])
        #expect(witnesses.count == 1 && witnesses[0]["name"] as? String == "procuracy" && witnesses[0]["trusted"] as? Bool == true)

        // The request as approved, in ETSI TS 103 120 (HI-1): valid against ETSI's XSDs, its
        // delivery carrying the package's signed manifest byte for byte.
        _ = try await d.cliOK(d.investigator, ["request", "export", request, "--etsi", "--out", d.path("request-hi1.xml")])
        let hi1 = try String(contentsOfFile: d.path("request-hi1.xml"), encoding: .utf8)
        #expect(try await ETSISchemas.xmllint(Array(hi1.utf8)) == nil)
        let manifestText = try #require(try json(try await d.cliOK(d.investigator, ["package", "show", packageId, "--json"]))["manifestText"] as? String)
        #expect(hi1.contains("<delivery:Data>\(Data(manifestText.utf8).base64EncodedString())</delivery:Data>"))
        #expect(hi1.contains("<delivery:LastSequence>true</delivery:LastSequence>"))
        let status = try await d.cliOK(d.investigator, ["request", "export", request, "--etsi", "--status"])
        #expect(status.contains("<common:Value>Disclosed</common:Value>"))
        #expect(try await ETSISchemas.xmllint(Array(status.utf8)) == nil)

        // Proofs checked by the CLI, offline, against the trust anchors: an event's inclusion, and
        // the witnessed checkpoint's consistency with the newest.
        let events = try json(try await d.cliOK(d.investigator, ["custody", "events", "--package", packageId, "--json"]))["events"] as? [[String: Any]] ?? []
        let firstIndex = try #require(events.first?["index"] as? Int)
        #expect(try await d.cliOK(d.investigator, ["custody", "prove", "\(firstIndex)", "--trust", trust]).hasPrefix("PROVEN: event \(firstIndex)"))
        let latest = try json(try await d.cliOK(d.investigator, ["custody", "checkpoint", "--json", "--trust", trust]))
        let witnessedSize = try #require(held["size"] as? Int), latestSize = try #require(latest["size"] as? Int)
        #expect(try await d.cliOK(d.investigator, ["custody", "consistency", "\(witnessedSize)", "\(latestSize)", "--trust", trust]).hasPrefix("CONSISTENT"))
        #expect(try await d.cliOK(witness, cosign).contains("consistent with #\(witnessedSize)"))
        // A sealed package is kept but not released; sealing and unsealing are custody events.
        _ = try await d.cliOK(d.approver, ["package", "seal", packageId, "--reason", "post-hoc review pending"])
        let refusedDownload = try await d.cli(d.investigator, ["download", packageId, "--out", d.path("sealed"), "--quiet"])
        #expect(refusedDownload.status != 0 && refusedDownload.stderr.contains("sealed"))
        #expect(try await d.cli(d.investigator, ["export", packageId, "--out", d.path("sealed.tar"), "--quiet"]).status != 0)
        #expect(try await d.cli(d.investigator, ["package", "seal", packageId, "--reason", "x"]).stderr.contains("403"))
        _ = try await d.cliOK(d.approver, ["package", "unseal", packageId, "--reason", "review confirmed"])
        let history = try await d.cliOK(d.investigator, ["custody", "events", "--package", packageId])
        #expect(history.contains("package.sealed") && history.contains("package.unsealed"))
        // The log audits clean against its own checkpoints and the one the witness holds.
        #expect(try await d.admin(["audit", "--checkpoint", d.path("witness-state.json")]).hasPrefix("custody audit: CONSISTENT"))
        var corrupted = try Data(contentsOf: URL(fileURLWithPath: bundle))
        let contentSize = try #require(verifyReport["contentSize"] as? Int)
        corrupted[corrupted.count - 1024 - (512 - contentSize % 512) % 512 - 5] ^= 0x01  // inside the content, before tar's padding and end
        try corrupted.write(to: URL(fileURLWithPath: d.path("corrupted.tar")))
        #expect(try await run("custos", ["verify", d.path("corrupted.tar"), "--trust", trust], environment: d.env).status == 1)
        // A bundle whose verdict was edited (a record more than there is): judged again, it is caught.
        var flattered = try Data(contentsOf: URL(fileURLWithPath: bundle))
        let claim = Data(#""records":600"#.utf8), boast = Data(#""records":601"#.utf8)
        let at = try #require(flattered.range(of: claim))
        flattered.replaceSubrange(at, with: boast)
        try flattered.write(to: URL(fileURLWithPath: d.path("flattered.tar")))
        let flatteredCheck = try await run("custos", ["verify", d.path("flattered.tar"), "--trust", trust, "--json"], environment: d.env)
        #expect(flatteredCheck.status == 1 && flatteredCheck.stdout.contains("\"code\": \"criteria\""), "\(flatteredCheck.stdout.suffix(800))")
        try Data("not a bundle".utf8).write(to: URL(fileURLWithPath: d.path("garbage.tar")))
        #expect(try await run("custos", ["verify", d.path("garbage.tar"), "--trust", trust], environment: d.env).status == 2)
        let extracted = d.path("extracted")
        try FileManager.default.createDirectory(atPath: extracted, withIntermediateDirectories: true)
        #expect(try runQuietly("/bin/tar", ["-xf", bundle, "-C", extracted]) == 0)
        let folder = extracted + "/custos-\(packageId)"
        let readme = try String(contentsOfFile: folder + "/README.txt", encoding: .utf8)
        for command in readme.split(separator: "\n").filter({ $0.hasPrefix("openssl ") }) {
            let status = try runQuietly("/bin/sh", ["-c", String(command)], in: URL(fileURLWithPath: folder),
                                        environment: ["TRUST": trust, "PATH": "/usr/bin:/bin"])
            #expect(status == 0, "\(command)")
        }
        // The bundle's custody document and every entry in it match schemas/custody.
        let custodyDocument = Array(try Data(contentsOf: URL(fileURLWithPath: folder + "/custody.json")))
        let criteriaCheck = try validate([Array(try Data(contentsOf: URL(fileURLWithPath: folder + "/criteria.json")))], schema: "package/criteria.json")
        #expect(criteriaCheck.status == 0, "criteria.json: \(criteriaCheck.output)")
        let proofsCheck = try validate([custodyDocument], schema: "custody/proofs.json")
        #expect(proofsCheck.status == 0, "custody.json: \(proofsCheck.output)")
        let entries = (try json(String(decoding: custodyDocument, as: UTF8.self))["events"] as? [[String: Any]] ?? []).compactMap { $0["entry"] as? String }
        let entriesCheck = try validate(entries.map { Array($0.utf8) }, schema: "custody/event.json")
        #expect(entriesCheck.status == 0 && entriesCheck.output.contains("\(entries.count) valid, 0 invalid"), "custody entries: \(entriesCheck.output)")

        // The connector keeps the broker's signed receipt, as received: proof of acceptance.
        let receiptFile = d.path("state/jobs/\(request)/receipt.json")
        let deadline = ContinuousClock.now + .seconds(60)
        while !FileManager.default.fileExists(atPath: receiptFile) && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(200)) }
        let brokerKey = try VerifyingKey.load(path: d.path("broker.pub"))
        let opened = try SignedEnvelope.open(Array(try Data(contentsOf: URL(fileURLWithPath: receiptFile)))) { $0 == "broker" ? brokerKey : nil }
        let receipt = try SignedEnvelope.body(ReceiptBody.self, from: opened.json).body
        #expect(receipt.outcome == .accepted && receipt.packageId == packageId && receipt.messageId == nil)

        // A request whose only adapter fails is refused by the provider, with a reason.
        let refusedRequest = try await d.submitRequest(targets: ["msisdn:+84912345678"], categories: ["kyc-document"])
        _ = try await d.cliOK(d.approver, ["request", "approve", refusedRequest])
        let refusedWatch = try await d.cli(d.investigator, ["request", "status", refusedRequest, "--watch", "--timeout", "120"])
        #expect(refusedWatch.stdout.contains("refused") && refusedWatch.stdout.contains("extraction-failed"))
        // Watching read the request once (one view in the custody log), then followed the live feed.
        let db = try DatabaseConfiguration(url: TestServices.databaseURL(), schema: try #require(d.env["CUSTOS_DATABASE_SCHEMA"]))
        let client = db.makeClient(logger: TestServices.logger, applicationName: "custos-tests")
        let views = try await withThrowingTaskGroup(of: Int.self) { group in
            group.addTask { await client.run(); return 0 }
            defer { group.cancelAll() }
            return try await client.query("""
                SELECT count(*) FROM custody_events WHERE kind = 'request.viewed' AND request_id = \(try #require(UUID(uuidString: refusedRequest)))
                """, logger: TestServices.logger).collect()[0].decode(Int.self)
        }
        #expect(views == 1, "watching recorded \(views) views")

        // The provider asks a question while it works on a request; the investigator answers it,
        // and the answer reaches the connector.
        let asked = try await d.submitRequest(targets: ["msisdn:+84912345678"], categories: ["location"])
        _ = try await d.cliOK(d.approver, ["request", "approve", asked])
        let job = d.path("state/jobs/\(asked)")
        let jobDeadline = ContinuousClock.now + .seconds(60)
        while !FileManager.default.fileExists(atPath: job + "/request.json") && ContinuousClock.now < jobDeadline { try await Task.sleep(for: .milliseconds(100)) }
        let clarify = try await run("custos-connector", ["clarify", asked, "--question", "Which cell sites: serving only, or neighbours too?", "--config", d.path("connector.json")],
                              environment: d.env)
        #expect(clarify.status == 0, "custos-connector clarify: \(clarify.stderr)")
        var questionId: String?
        while questionId == nil && ContinuousClock.now < jobDeadline {
            let v = try json(try await d.cliOK(d.investigator, ["request", "status", asked, "--json"]))
            questionId = (v["clarifications"] as? [[String: Any]])?.first?["id"] as? String
            if questionId == nil { try await Task.sleep(for: .milliseconds(100)) }
        }
        let question = try #require(questionId, "the question never reached the broker")
        #expect(try await d.cliOK(d.investigator, ["request", "status", asked]).contains("paused (a question is open)"))
        #expect(try await d.cli(d.approver, ["request", "answer", asked, "--question", question, "--answer", "x"]).stderr.contains("403"))
        #expect(try await d.cliOK(d.investigator, ["request", "answer", asked, "--question", question, "--answer", "Serving cells only."])
            .contains("0 question(s) open"))
        var answerShown = false
        while !answerShown && ContinuousClock.now < jobDeadline {
            let status = try await run("custos-connector", ["status", "--config", d.path("connector.json")], environment: d.env)
            answerShown = status.stdout.contains("answer to question \(question.lowercased()): Serving cells only.")
            if !answerShown { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(answerShown, "the connector never showed the answer")
        _ = FileManager.default.createFile(atPath: d.path("release"), contents: nil)
        let askedWatch = try await d.cli(d.investigator, ["request", "status", asked, "--watch", "--timeout", "120"])
        #expect(askedWatch.stdout.contains("clarification-requested") && askedWatch.stdout.contains("clarification-answered")
                && askedWatch.stdout.contains("verified"))

        // A preservation order: the provider's program freezes the data and the connector confirms;
        // the investigator extends it once and then releases it, and the program hears of both.
        let order = try await d.submitRequest(targets: ["msisdn:+84912345678"], categories: ["subscriber"], extra: ["--preservation"])
        _ = try await d.cliOK(d.approver, ["request", "approve", order])
        let preserved = try await d.cli(d.investigator, ["request", "status", order, "--watch", "--timeout", "60"])
        #expect(preserved.status == 0 && preserved.stdout.contains("preserved"), "connector: \(d.connector!.output.suffix(2000))")
        func steps() -> [String] {
            ((try? String(contentsOfFile: d.path("preservation.log"), encoding: .utf8)) ?? "").split(separator: "\n").compactMap { line in
                (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["action"] as? String
            }
        }
        #expect(steps() == ["preserve"])
        // The order comes again (as the broker sends it while it has no confirmation, which a
        // Kafka that lost its state may have lost): the connector confirms it again, under the
        // same message id, and its program is not run again.
        let sentOrder = try #require(try await collectEnvelopes(topics: [Topics.toProvider(d.provider)], mustSee: [.request]).first { bytes in
            (try? JSONDecoder().decode(EnvelopeHeader.self, from: Data(bytes))).map { $0.type == .request && $0.requestId.lowercased == order.lowercased() } == true
        })
        let again = try KafkaProducer(configuration: try TestServices.kafka(), logger: TestServices.logger)
        try await again.send(OutgoingMessage(topic: Topics.toProvider(d.provider), key: Array(order.lowercased().utf8), value: sentOrder))
        again.shutdown()
        let confirmedAgain = ContinuousClock.now + .seconds(30)
        while !d.connector!.output.contains("its confirmations sent again") && ContinuousClock.now < confirmedAgain {
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(d.connector!.output.contains("its confirmations sent again"))
        let confirmations = try await collectEnvelopes(topics: [Topics.fromProvider(d.provider)], mustSee: [.preserved]).compactMap { bytes in
            (try? JSONDecoder().decode(EnvelopeHeader.self, from: Data(bytes))).flatMap { $0.type == .preserved ? $0.id : nil }
        }
        #expect(confirmations.count == 2 && Set(confirmations).count == 1, "\(confirmations)")
        #expect(steps() == ["preserve"])
        #expect(try await d.cliOK(d.investigator, ["request", "extend", order]).contains("frozen until"))
        #expect(try await d.cli(d.investigator, ["request", "extend", order]).stderr.contains("once"))
        _ = try await d.cliOK(d.investigator, ["request", "release", order, "--reason", "no longer needed"])
        let stepsDeadline = ContinuousClock.now + .seconds(30)
        while steps().count < 3 && ContinuousClock.now < stepsDeadline { try await Task.sleep(for: .milliseconds(100)) }
        #expect(steps() == ["preserve", "extend", "release"])
        let orderTimeline = try await d.cliOK(d.investigator, ["request", "timeline", order])
        #expect(orderTimeline.contains("extended until") && orderTimeline.contains("released"))

        // Every message the broker and the connector emitted validates against schemas/messages.
        let envelopes = try await collectEnvelopes(topics: Topics.all(d.provider),
                                                   mustSee: [.request, .receipt, .ack, .status, .refusal, .manifest, .chunk,
                                                             .clarificationRequest, .clarification, .preserved, .preservationExtension, .preservationRelease])
        let report = try validate(envelopes)
        #expect(report.status == 0, "schema violations:\n\(report.output)")
        #expect(report.output.contains("\(envelopes.count) valid, 0 invalid"))
        // The connector's messages were all applied: no message receipt says otherwise.
        let notApplied = envelopes.compactMap { bytes -> String? in
            guard let json = try? JSONParser.parse(bytes), json["type"]?.stringValue == "receipt", let id = json["body"]?["messageId"]?.stringValue else { return nil }
            return "\(json["body"]?["messageType"]?.stringValue ?? "") \(id): \(json["body"]?["reasons"].map { String(decoding: CanonicalJSON.serialize($0), as: UTF8.self) } ?? "")"
        }
        #expect(notApplied.isEmpty, "\(notApplied)")
        // Custos writes every id in lower case (RFC 9562 §4), on both sides of the wire.
        let upperCaseUUID = #/[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}/#
        let withUpperCase = envelopes.filter { (try? upperCaseUUID.firstMatch(in: String(decoding: $0, as: UTF8.self))) != nil }
        #expect(withUpperCase.isEmpty, "\(withUpperCase.count) messages carry an upper-case UUID")
        let orderJSON = try await d.cliOK(d.investigator, ["request", "status", order, "--json"])
        let upperInAPI = try upperCaseUUID.firstMatch(in: orderJSON)
        #expect(orderJSON.contains(order.lowercased()) && upperInAPI == nil, "the API writes ids in lower case")
    }

    @Test func anEmergencyTakesTheUrgentLaneAndItsRevocationSealsThePackageAndStopsTheProvider() async throws {
        let d = try Deployment(adapter: [Self.synth, "--records-per-target", "50"])
        defer { d.stop() }
        try await d.setUp()
        let duty = try await d.admin(["users", "add", TestServices.unique("duty-"), "--role", "duty-approver"])
        let reviewer = try await d.admin(["users", "add", TestServices.unique("rev-"), "--role", "reviewer"])
        try await d.startBroker()
        try await d.startConnector()
        let request = try await d.submitRequest(targets: ["msisdn:+84912345678"], extra: [
            "--emergency", "threat-to-life", "--statement", "A missing child's phone; the abductor is calling the family from it.",
        ])
        // An ordinary approver is not on the fast track; the duty approver is, alone.
        #expect(try await d.cli(d.approver, ["request", "approve", request]).stderr.contains("duty approver"))
        _ = try await d.cliOK(duty, ["request", "approve", request])
        let watched = try await d.cli(d.investigator, ["request", "status", request, "--watch", "--timeout", "120"])
        #expect(watched.status == 0, "broker: \(d.broker!.output.suffix(2000))\nconnector: \(d.connector!.output.suffix(2000))")
        let shown = try await d.cliOK(d.investigator, ["request", "status", request])
        #expect(shown.contains("(emergency: threat-to-life)") && shown.contains("review: pending") && shown.contains("clock review"))
        let view = try json(try await d.cliOK(d.investigator, ["request", "status", request, "--json"]))
        let packageId = try #require((view["packages"] as? [[String: Any]])?.first?["id"] as? String).lowercased()

        // The reviewer revokes it: the package is sealed for good, and the provider is told.
        #expect(try await d.cli(reviewer, ["request", "review", request, "--revoke"]).stderr.contains("reason"))
        let revoked = try await d.cliOK(reviewer, ["request", "review", request, "--revoke", "--reason", "the child was found at home"])
        #expect(revoked.contains("emergency revoked"))
        let refused = try await d.cli(d.investigator, ["download", packageId, "--out", d.path("dl"), "--quiet"])
        #expect(refused.status != 0 && refused.stderr.contains("revoked by a reviewer"))
        #expect(try await d.cli(d.approver, ["package", "unseal", packageId, "--reason", "please"]).stderr.contains("403"))
        let revokedFile = d.path("state/jobs/\(request)/revoked.json")
        let deadline = ContinuousClock.now + .seconds(30)
        while !FileManager.default.fileExists(atPath: revokedFile) && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(100)) }
        #expect(FileManager.default.fileExists(atPath: revokedFile), "the connector never heard of the revocation")
        let timeline = try await d.cliOK(d.investigator, ["request", "timeline", request])
        #expect(timeline.contains("emergency-revoked"))

        // The urgent topics' messages validate against schemas/messages. The connector sent the
        // emergency's whole return — ack, status, chunks, manifest — on the urgent return lane.
        let envelopes = try await collectEnvelopes(topics: [Topics.toProviderUrgent(d.provider), Topics.fromProviderUrgent(d.provider)],
                                                   mustSee: [.request, .revocation, .ack, .status, .chunk, .manifest])
        let returned = try await collectEnvelopes(topics: [Topics.fromProvider(d.provider)], mustSee: [])
        #expect(returned.isEmpty, "\(returned.count) messages of the emergency came back on the normal topic")
        let report = try validate(envelopes)
        #expect(report.status == 0 && report.output.contains("\(envelopes.count) valid, 0 invalid"), "schema violations:\n\(report.output)")
    }

    /// Package protocol v2: chunks go out while the adapter runs. The connector is killed
    /// mid-stream while its adapter still runs, and the broker while it ingests those chunks
    /// (some written to its chunk store before their Kafka offsets were stored). The restarted
    /// connector runs the adapter again under a new package id (the first package's chunks may
    /// hold records that would not come again); the restarted broker takes in the redelivered
    /// chunks and the new package, and verifies it. Nothing is stored twice.
    @Test func killedConnectorAndBrokerResumeAndThePackageIsStoredExactlyOnce() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent(TestServices.unique("custos-adapter-"))
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let runs = dir.appendingPathComponent("runs").path
        let script = dir.appendingPathComponent("adapter.sh").path
        // About 68 MB of records for one target: ~130 chunks. The first run then hangs (the
        // adapter still "runs" when the connector is killed); the second ends.
        try """
            #!/bin/sh
            echo run >> \(runs)
            \(Self.synth) --records-per-target 120000 --padding 330
            if [ "$(wc -l < \(runs))" -eq 1 ]; then sleep 600; fi
            """.write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)

        let d = try Deployment(adapter: [script], inFlightChunks: 2)
        defer { d.stop() }
        try await d.setUp()
        try await d.startBroker()
        try await d.startConnector()
        let request = try await d.submitRequest(targets: ["msisdn:+84912345678"], categories: ["traffic"])
        _ = try await d.cliOK(d.approver, ["request", "approve", request])

        // 1. kill -9 the connector in the middle of streaming, its adapter still running.
        let progressFile = d.path("state/jobs/\(request)/progress")
        var progress = 0
        let deadline = ContinuousClock.now + .seconds(240)
        while progress < 15 && ContinuousClock.now < deadline {
            progress = (try? String(contentsOfFile: progressFile, encoding: .utf8)).flatMap { Int($0) } ?? 0
            try await Task.sleep(for: .milliseconds(20))
        }
        d.connector!.kill9()
        let first = try String(contentsOfFile: d.path("state/jobs/\(request)/package-id"), encoding: .utf8)

        // 2. kill -9 the broker in the middle of ingesting what the connector sent (once it has
        //    taken some in: a loaded machine may be a moment behind).
        var received = 0
        let ingestDeadline = ContinuousClock.now + .seconds(60)
        while received == 0 && ContinuousClock.now < ingestDeadline {
            let beforeKill = try json(try await d.cliOK(d.investigator, ["request", "status", request, "--json"]))
            received = ((beforeKill["packages"] as? [[String: Any]])?.first?["chunksReceived"] as? Int) ?? 0
            if received == 0 { try await Task.sleep(for: .milliseconds(20)) }
        }
        d.broker!.kill9()
        let restarted = Date()
        #expect(progress >= 15 && received > 0, "not killed mid-stream (connector \(progress), broker \(received))")

        // 3. Restart the broker, then the connector (its TSA is the broker's): the new package
        //    completes, verifies, and is stored once.
        try await d.startBroker()
        try await d.startConnector()
        let watched = try await d.cli(d.investigator, ["request", "status", request, "--watch", "--timeout", "300"])
        #expect(watched.status == 0, "broker: \(d.broker!.output.suffix(2000))\nconnector: \(d.connector!.output.suffix(2000))")
        let view = try json(try await d.cliOK(d.investigator, ["request", "status", request, "--json"]))
        #expect(view["state"] as? String == "verified")
        let packages = try #require(view["packages"] as? [[String: Any]])
        let delivered = packages.filter { $0["chunkCount"] != nil }
        try #require(delivered.count == 1)
        #expect(delivered[0]["id"] as? String != first, "the adapter ran again: a new package")
        // The first package's chunks are there, without a manifest: it never completes.
        #expect(packages.contains { $0["id"] as? String == first && $0["chunkCount"] == nil && $0["state"] as? String == "receiving" })
        let packageView = try json(try await d.cliOK(d.investigator, ["package", "show", try #require(delivered[0]["id"] as? String), "--json"]))
        let manifest = try JSONDecoder().decode(Manifest.self, from: JSONSerialization.data(withJSONObject: try #require(packageView["manifest"])))
        let chunkCount = manifest.chunks.count
        #expect(manifest.content.size >= 50_000_000 && received < chunkCount)
        #expect(delivered[0]["chunksReceived"] as? Int == chunkCount)
        #expect(delivered[0]["state"] as? String == "verified")
        #expect(try String(contentsOfFile: runs, encoding: .utf8).split(separator: "\n").count == 2)
        // Chunks are content-addressed: the redelivered ones, and the second package's (the
        // same records, so the same chunks) were not stored again. A write the killed broker had
        // in progress may have left its temporary file (`.<sha256>.<uuid>.tmp`, swept after an
        // hour by `ChunkStore.sweepTemporaryFiles`); none may come from the restarted broker.
        let files = try FileManager.default.subpathsOfDirectory(atPath: d.path("chunks")).filter { $0.contains("/") }
        let temporaries = files.filter { ($0 as NSString).lastPathComponent.hasPrefix(".") }
        let stored = files.filter { !($0 as NSString).lastPathComponent.hasPrefix(".") }
        #expect(stored.count == chunkCount, "\(stored.count) chunk files for \(chunkCount) chunks")
        for temporary in temporaries {
            let modified = try FileManager.default.attributesOfItem(atPath: d.path("chunks/\(temporary)"))[.modificationDate] as? Date
            #expect(temporary.hasSuffix(".tmp") && (modified ?? .distantFuture) < restarted, "\(temporary) was left by the restarted broker")
        }
        let downloaded = try json(try await d.cliOK(d.investigator, ["download", delivered[0]["id"] as! String, "--out", d.path("dl"), "--quiet", "--json"]))
        #expect(downloaded["chunksRoot"] as? String == manifest.chunksRoot)
    }

    /// End-to-end acknowledgement of a package (issue 18): the broker is down while the
    /// connector sends, so no receipt comes. The connector sends its manifest again after
    /// `receipts.timeoutSeconds`; a broker-signed `resend` gets exactly the chunks it lists sent
    /// again (same message ids); once the broker is back it verifies the package once, stores
    /// each chunk once, and its receipt lets the connector delete the content.
    @Test func withoutAReceiptTheConnectorSendsItsManifestAgainAndTheChunksTheBrokerAsksFor() async throws {
        let d = try Deployment(adapter: [Self.synth, "--records-per-target", "4000", "--padding", "330"])
        defer { d.stop() }
        d.connectorConfig["receipts"] = ["timeoutSeconds": 2]
        // A consumer group of its own (as in production), not the stopped broker's.
        d.connectorEnvironment["CUSTOS_KAFKA_GROUP_ID"] = TestServices.unique("custos-connector-")
        try await d.setUp()
        // A time-stamping authority apart from the broker (a broker on a schema of its own, with
        // no provider: it consumes nothing), so that the connector time-stamps while it is down.
        let (tsa, tsaURL) = try await d.startAnotherBroker("tsa", environment: [
            "CUSTOS_DATABASE_SCHEMA": TestServices.unique("tsa_"), "CUSTOS_KAFKA_GROUP_ID": TestServices.unique("custos-tsa-"),
        ])
        defer { tsa.stop() }
        try await d.startBroker()
        let request = try await d.submitRequest(targets: ["msisdn:+84912345678"], categories: ["traffic"])
        _ = try await d.cliOK(d.approver, ["request", "approve", request])
        var state = ""
        let dispatched = ContinuousClock.now + .seconds(30)
        while state != "dispatched" && ContinuousClock.now < dispatched {
            state = try json(try await d.cliOK(d.investigator, ["request", "status", request, "--json"]))["state"] as? String ?? ""
            if state != "dispatched" { try await Task.sleep(for: .milliseconds(50)) }
        }
        try #require(state == "dispatched")
        // The broker dies. (kill -9: Tansu, the test's Kafka, keeps a consumer group that a
        // member left with LeaveGroup from serving the member that rejoins it for minutes.)
        d.broker!.kill9()

        // 1. The package goes out; no receipt comes; the manifest goes again.
        try await d.startConnector(tsa: tsaURL)
        let job = "state/jobs/\(request)/"
        func waitForFile(_ name: String, _ seconds: Int) async throws -> Bool {
            let deadline = ContinuousClock.now + .seconds(seconds)
            while !FileManager.default.fileExists(atPath: d.path(job + name)) && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(100)) }
            return FileManager.default.fileExists(atPath: d.path(job + name))
        }
        #expect(try await waitForFile("sent", 120), "connector: \(d.connector!.output.suffix(2000))")
        #expect(try await waitForFile("manifest-resends", 30), "the manifest was not sent again")
        _ = try await d.connector!.waitFor("its manifest was sent again", timeout: .seconds(5))

        // 2. The broker (its key) asks for chunks 0 and 2: exactly those go again.
        let manifestBytes = try Data(contentsOf: URL(fileURLWithPath: d.path(job + "manifest.json")))
        let manifest = try JSONDecoder().decode(Manifest.self, from: manifestBytes)
        #expect(manifest.chunks.count >= 3)
        let resendId = UUID()
        let resend = Envelope(type: .resend, id: resendId, requestId: try #require(UUID(uuidString: request)), sender: "broker",
                              body: ResendBody(packageId: manifest.packageId.lowercased, manifestSha256: Digest.sha256Hex(Array(manifestBytes)),
                                               indices: [0, 2], attempt: 1))
        let producer = try KafkaProducer(configuration: try TestServices.kafka(), logger: TestServices.logger)
        defer { producer.shutdown() }
        try await producer.send(OutgoingMessage(topic: Topics.toProvider(d.provider), key: Array(request.lowercased().utf8),
                                                value: try SignedEnvelope.encode(resend, signer: try SigningKey.load(path: d.path("broker.key")))))
        #expect(try await waitForFile("resend-\(resendId.lowercased).json.done", 60), "connector: \(d.connector!.output.suffix(2000))")
        let sent = try await collectEnvelopes(topics: [Topics.fromProvider(d.provider)], mustSee: [.chunk, .manifest])
        var chunkIndices: [Int: Int] = [:]
        var manifests = 0
        for bytes in sent {
            let json = try JSONParser.parse(bytes)
            if json["type"]?.stringValue == "manifest" { manifests += 1 }
            if json["type"]?.stringValue == "chunk", case .number(let i)? = json["body"]?["index"] { chunkIndices[Int(i), default: 0] += 1 }
        }
        #expect(manifests >= 2)
        #expect(chunkIndices[0] == 2 && chunkIndices[2] == 2 && chunkIndices[1] == 1 && chunkIndices.count == manifest.chunks.count, "\(chunkIndices)")

        // 3. The broker comes back: one package, verified, each chunk stored once; the receipt
        //    arrives and the connector lets the content go.
        try await d.startBroker()
        let watched = try await d.cli(d.investigator, ["request", "status", request, "--watch", "--timeout", "120"])
        #expect(watched.status == 0, "broker: \(d.broker!.output.suffix(2000))")
        let view = try json(try await d.cliOK(d.investigator, ["request", "status", request, "--json"]))
        #expect(view["state"] as? String == "verified")
        #expect((view["packages"] as? [[String: Any]])?.count == 1)
        #expect(try await waitForFile("receipt.json", 60))
        let contentGone = ContinuousClock.now + .seconds(30)
        while FileManager.default.fileExists(atPath: d.path(job + "results")) && ContinuousClock.now < contentGone { try await Task.sleep(for: .milliseconds(100)) }
        #expect(!FileManager.default.fileExists(atPath: d.path(job + "results")), "the content is kept after an accepted receipt")
        let stored = try FileManager.default.subpathsOfDirectory(atPath: d.path("chunks")).filter { $0.contains("/") && !($0 as NSString).lastPathComponent.hasPrefix(".") }
        #expect(stored.count == manifest.chunks.count)
    }

    /// Reads the topics from the start with a fresh group until every listed type was seen and
    /// nothing new arrives for two seconds; returns the envelopes (chunk envelopes from their header).
    func collectEnvelopes(topics: [String], mustSee: Set<MessageType>) async throws -> [[UInt8]] {
        let consumer = try KafkaConsumer(configuration: try TestServices.kafka(), groupId: TestServices.unique("custos-schema-"),
                                         topics: topics, logger: TestServices.logger)
        defer { consumer.close() }
        let collected = Collected()
        let reader = Task { for try await m in consumer.messages { collected.add(m) } }
        defer { reader.cancel() }
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            let (seen, quiet) = collected.state
            if seen.isSuperset(of: mustSee) && quiet > .seconds(2) { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        let (envelopes, seen) = collected.result
        #expect(seen.isSuperset(of: mustSee), "types never seen: \(mustSee.subtracting(seen))")
        return envelopes
    }

    final class Collected: Sendable {
        private let state_ = Mutex<(envelopes: [[UInt8]], seen: Set<MessageType>, last: ContinuousClock.Instant)>(([], [], .now))

        func add(_ m: KafkaMessage) {
            let envelope = m.header(Topics.envelopeHeader) ?? m.value
            let type = (try? JSONDecoder().decode(EnvelopeHeader.self, from: Data(envelope)))?.type
            state_.withLock { s in
                s.envelopes.append(envelope)
                if let type { s.seen.insert(type) }
                s.last = .now
            }
        }

        var state: (Set<MessageType>, Duration) { state_.withLock { ($0.seen, ContinuousClock.now - $0.last) } }
        var result: ([[UInt8]], Set<MessageType>) { state_.withLock { ($0.envelopes, $0.seen) } }
    }

    func openssl(_ args: [String]) throws -> Int32 {
        try runQuietly("/usr/bin/openssl", args)
    }

    func validate(_ envelopes: [[UInt8]], schema: String = "messages/envelope.json") throws -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", TestServices.root.appendingPathComponent("schemas/validate.py").path, schema]
        let input = Pipe(), output = Pipe()
        p.standardInput = input
        p.standardOutput = output
        p.standardError = output
        try p.run()
        var all = Data()
        for e in envelopes { all.append(contentsOf: e); all.append(0x0A) }
        try input.fileHandleForWriting.write(contentsOf: all)
        try input.fileHandleForWriting.close()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return (p.terminationStatus, text)
    }
}
