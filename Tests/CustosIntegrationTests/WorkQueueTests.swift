@testable import CustosBroker
import CustosClient
import CustosCustody
import CustosModel
import CustosTestSupport
import Foundation
import NIOCore
import PostgresNIO
import Synchronization
import Testing

/// Work queues for people (issue 16) against a real PostgreSQL: lists with every filter and
/// cursor paging, the inbox by role, shared cases, and the live feed.
@Suite("Work queues", .timeLimit(.minutes(3)))
struct WorkQueueTests {
    struct World {
        var p: EmergencyTests.People
        var inv2: AuthenticatedUser
        var caseA: UUID
        var caseB: UUID
    }

    static func world(_ store: BrokerStore) async throws -> World {
        let pki = try TestPKI(signerName: "prov-a")
        let p = try await EmergencyTests.people(store, pki)
        let inv2 = try await store.addUser(name: "inv2", role: .investigator, by: .testAdmin).0
        let a = try await store.createCase(title: "Case A", by: p.inv)
        let b = try await store.createCase(title: "Case B", by: inv2)
        return World(p: p, inv2: inv2, caseA: a.id, caseB: b.id)
    }

    @Test func listsFilterSortAndPageWithinTheAgency() async throws {
        try await TestServices.withStore { store, _, _ in
            let w = try await Self.world(store)
            // Case A: three drafts, two submitted normal requests, one submitted emergency, one
            // approved; case B (inv2's): one draft.
            var drafts: [UUID] = []
            for _ in 0..<3 { drafts.append(try await store.draft(BrokerAPITests.spec(caseId: w.caseA), by: w.p.inv)) }
            var submitted: [UUID] = []
            for _ in 0..<2 {
                let id = try await store.draft(BrokerAPITests.spec(caseId: w.caseA), by: w.p.inv)
                try await store.submit(id, by: w.p.inv)
                submitted.append(id)
            }
            let emergency = try await store.draft(EmergencyTests.emergencySpec(caseId: w.caseA), by: w.p.inv)
            try await store.submit(emergency, by: w.p.inv)
            let approved = try await store.draft(BrokerAPITests.spec(caseId: w.caseA), by: w.p.inv)
            try await store.submit(approved, by: w.p.inv)
            try await store.approve(approved, by: w.p.approver)
            let other = try await store.draft(BrokerAPITests.spec(caseId: w.caseB), by: w.inv2)
            let all = drafts + submitted + [emergency, approved, other]

            func list(_ change: (inout BrokerStore.RequestFilter) -> Void, as user: AuthenticatedUser? = nil) async throws -> [UUID] {
                var f = BrokerStore.RequestFilter()
                change(&f)
                return try await store.listRequests(f, viewer: user ?? w.p.inv).items.map(\.id)
            }
            // Newest change first: the approval was the last change but one (then the other case's draft).
            #expect(try await list { _ in } == [other, approved, emergency] + submitted.reversed() + drafts.reversed())
            #expect(Set(try await list { $0.states = [.submitted] }) == Set(submitted + [emergency]))
            #expect(Set(try await list { $0.states = [.draft, .approved] }) == Set(drafts + [approved, other]))
            #expect(try await list { $0.priority = .emergency } == [emergency])
            #expect(try await list { $0.kind = .preservation }.isEmpty)
            #expect(try await list { $0.caseId = w.caseB } == [other])
            #expect(try await list { $0.provider = "prov-a" }.count == all.count)
            #expect(Set(try await list { $0.submitter = "inv" }) == Set(submitted + [emergency, approved]))
            #expect(try await list({ $0.mine = true }, as: w.inv2) == [other])
            #expect(try await list({ $0.mine = true }, as: w.p.approver) == [approved])  // the one they approved
            let approvedView = try await store.listRequests(BrokerStore.RequestFilter(), viewer: w.p.inv).items.first { $0.id == approved }!
            #expect(approvedView.state == .approved && approvedView.submittedBy == "inv" && approvedView.createdBy == "inv")
            #expect(approvedView.nextClock == "acknowledgement" && approvedView.nextDeadline != nil)
            let at = try #require(Timestamp.parse(approvedView.updatedAt))
            #expect(try await list { $0.updatedAfter = at.addingTimeInterval(-0.0005) }.contains(approved))
            #expect(try await list { $0.updatedBefore = at.addingTimeInterval(-60) }.isEmpty)
            #expect(try await list { $0.createdAfter = Date().addingTimeInterval(60) }.isEmpty)

            // Paging, by either sort: every request once, in order, in pages of 2.
            for sort in BrokerStore.ListSort.allCases {
                var seen: [UUID] = []
                var f = BrokerStore.RequestFilter()
                f.sort = sort
                f.limit = 2
                var pages = 0
                repeat {
                    let page = try await store.listRequests(f, viewer: w.p.inv)
                    #expect(page.items.count <= 2)
                    seen += page.items.map(\.id)
                    f.cursor = try page.next.map { try #require(BrokerStore.ListCursor($0)) }
                    pages += 1
                } while f.cursor != nil && pages < 20
                #expect(seen.count == all.count && Set(seen) == Set(all), "\(sort)")
                if sort == .created { #expect(seen == all.reversed()) }
            }
            // A cursor of the other sort, or not one of ours, is refused.
            var f = BrokerStore.RequestFilter()
            f.limit = 1
            let cursor = try #require(try await store.listRequests(f, viewer: w.p.inv).next)
            f.sort = .created
            f.cursor = BrokerStore.ListCursor(cursor)
            await #expect(throws: BrokerError.self) { try await store.listRequests(f, viewer: w.p.inv) }
            #expect(BrokerStore.ListCursor("not-a-cursor") == nil)

            // Another agency sees none of it.
            try await store.addAgency(id: "other", name: "Another agency", by: .testAdmin)
            let outsider = try await store.addUser(name: "inv-b", role: .investigator, agency: "other", by: .testAdmin).0
            #expect(try await list({ _ in }, as: outsider).isEmpty)
            #expect(try await store.listCases(mine: false, limit: 50, cursor: nil, viewer: outsider).items.isEmpty)

            // Cases: newest first, with members and counts; mine: the caller's.
            let cases = try await store.listCases(mine: false, limit: 50, cursor: nil, viewer: w.p.inv).items
            #expect(cases.map(\.id) == [w.caseB, w.caseA])
            #expect(cases[1].requests == 7 && cases[1].open == 7 && cases[1].members == ["inv"])
            #expect(try await store.listCases(mine: true, limit: 50, cursor: nil, viewer: w.p.inv).items.map(\.id) == [w.caseA])
            let first = try await store.listCases(mine: false, limit: 1, cursor: nil, viewer: w.p.inv)
            #expect(first.items.map(\.id) == [w.caseB])
            let second = try await store.listCases(mine: false, limit: 1, cursor: BrokerStore.ListCursor(try #require(first.next)), viewer: w.p.inv)
            #expect(second.items.map(\.id) == [w.caseA] && second.next == nil)
        }
    }

    @Test func theInboxShowsWhatWaitsForEachRole() async throws {
        let ingest = try IngestTests()
        try await TestServices.withStore(tsaTrust: ingest.pki.tsaCA) { store, client, _ in
            // A verified package and an open question for inv's case.
            let r = try await ingest.approvedRequest(store)
            let keys = try await store.providers()
            let question = UUID()
            _ = try await store.ingest(try ingest.message(.clarificationRequest, r.id, ClarificationRequestBody(question: "Which contract?"), id: question),
                                       providerKeys: keys)
            let p = try ingest.package(for: r)
            let (m, chunks) = try ingest.messages(p, r)
            for msg in chunks + [m] { _ = try await store.ingest(msg, providerKeys: keys) }
            var ids: [String: UUID] = [:]
            for try await (name, id) in try await client.query("SELECT name, id FROM users", logger: TestServices.logger).decode((String, UUID).self) {
                ids[name] = id
            }
            func user(_ name: String, _ roles: Set<Role>) throws -> AuthenticatedUser {
                var u = AuthenticatedUser(id: try #require(ids[name]), name: name, role: roles.first!)
                u.roles = roles
                return u
            }
            let inv = try user("inv", [.investigator]), appr = try user("appr", [.approver])
            let duty = try await store.addUser(name: "duty", role: .dutyApprover, by: .testAdmin).0
            let rev = try await store.addUser(name: "rev", role: .reviewer, by: .testAdmin).0
            let inv2 = try await store.addUser(name: "inv2", role: .investigator, by: .testAdmin).0
            let caseId = try await store.request(r.id, viewer: nil).spec.caseId

            // Waiting for approvers: a normal and an emergency submission by inv.
            let normal = try await store.draft(BrokerAPITests.spec(caseId: caseId), by: inv)
            try await store.submit(normal, by: inv)
            let urgent = try await store.draft(EmergencyTests.emergencySpec(caseId: caseId), by: inv)
            try await store.submit(urgent, by: inv)

            #expect(try await store.inbox(for: appr).items.map { "\($0.task.rawValue) \($0.requestId)" } == ["approve \(normal)"])
            #expect(try await store.inbox(for: duty).items.map { "\($0.task.rawValue) \($0.requestId)" } == ["approve-emergency \(urgent)"])
            #expect(try await store.inbox(for: inv).items.map(\.task) == [.answer, .open])  // no deadline (delivered): oldest first
            let answer = try #require(try await store.inbox(for: inv).items.first)
            #expect(answer.questionId == question && answer.requestId == r.id)
            #expect(try await store.inbox(for: inv2).items.isEmpty)  // not a member of the case
            #expect(try await store.inbox(for: rev).items.isEmpty)
            // The emergency approved on the fast track waits for review, with its review clock.
            try await store.approve(urgent, by: duty)
            let review = try #require(try await store.inbox(for: rev).items.first)
            #expect(review.task == .review && review.requestId == urgent && review.deadline != nil)
            #expect(try await store.inbox(for: duty).items.isEmpty)
            // Answered and opened: gone from the investigator's inbox.
            try await store.answer(r.id, question: question, answer: "The prepaid one.", by: inv)
            try await store.markOpened(package: p.manifest.packageId, by: inv)
            #expect(try await store.inbox(for: inv).items.isEmpty)
            // The submitter's own submission never waits in their own inbox.
            var invApprover = inv
            invApprover.roles.insert(.approver)
            #expect(try await store.inbox(for: invApprover).items.map(\.requestId) == [])
        }
    }

    @Test func aSharedCaseLetsColleaguesActAsItsAuthor() async throws {
        try await TestServices.withStore { store, client, _ in
            let w = try await Self.world(store)
            let draft = try await store.draft(BrokerAPITests.spec(caseId: w.caseA), by: w.p.inv)
            // Not a member: may neither add to the case nor submit its requests.
            await #expect(throws: BrokerError.self) { try await store.draft(BrokerAPITests.spec(caseId: w.caseA), by: w.inv2) }
            await #expect(throws: BrokerError.self) { try await store.submit(draft, by: w.inv2) }
            await #expect(throws: BrokerError.self) { _ = try await store.addCaseMember(w.caseA, user: "inv2", by: w.inv2) }
            // Only an investigator of the same agency may be added.
            await #expect(throws: BrokerError.self) { _ = try await store.addCaseMember(w.caseA, user: "appr", by: w.p.inv) }
            await #expect(throws: BrokerError.self) { _ = try await store.addCaseMember(w.caseA, user: "nobody", by: w.p.inv) }
            let shared = try await store.addCaseMember(w.caseA, user: "inv2", by: w.p.inv)
            #expect(shared.members == ["inv", "inv2"])
            #expect(try await store.addCaseMember(w.caseA, user: "inv2", by: w.p.inv).members == ["inv", "inv2"])  // twice is harmless
            // Now inv2 acts as the author does.
            try await store.submit(draft, by: w.inv2)
            let theirs = try await store.draft(BrokerAPITests.spec(caseId: w.caseA), by: w.inv2)
            try await store.withdraw(theirs, by: w.p.inv, reason: nil)
            #expect(try await store.request(draft, viewer: nil).state == .submitted)
            #expect(try await store.request(theirs, viewer: nil).state == .withdrawn)
            // Recorded in custody once, naming the colleague.
            let events = try await client.query("SELECT entry FROM custody_events WHERE kind = 'case.member-added'", logger: TestServices.logger)
                .collect().map { try CustodyEvent.decode(entry: Array($0.decode(ByteBuffer.self).readableBytesView)) }
            #expect(events.count == 1 && events[0].details["member"] == "inv2" && events[0].subject.caseId == w.caseA)
        }
    }

    @Test func theLiveFeedCarriesEveryChangeOnceAndResumes() async throws {
        try await TestServices.withStore { store, client, _ in
            let w = try await Self.world(store)
            let feed = LiveFeed(client: client, interval: .milliseconds(20), logger: TestServices.logger)
            let running = Task { try await feed.run() }
            defer { running.cancel() }
            let id = try await store.draft(BrokerAPITests.spec(caseId: w.caseA), by: w.p.inv)
            // The draft is past once the feed has read it: subscribers from then on hear only what follows.
            let drafted = try await client.query("SELECT max(id) FROM live_events", logger: TestServices.logger).collect()[0].decode(Int64.self)
            while feed.newest < drafted { try await Task.sleep(for: .milliseconds(20)) }
            let (_, mine) = feed.subscribe(LiveFeed.Filter(agency: w.p.inv.agency, requestId: id))
            let (_, agency) = feed.subscribe(LiveFeed.Filter(agency: w.p.inv.agency))
            try await store.addAgency(id: "other", name: "Another agency", by: .testAdmin)
            let (_, outside) = feed.subscribe(LiveFeed.Filter(agency: "other"))
            let before = try await client.query("SELECT coalesce(max(id), 0) FROM live_events", logger: TestServices.logger).collect()[0].decode(Int64.self)
            try await store.submit(id, by: w.p.inv)
            try await store.approve(id, by: w.p.approver)
            _ = try await store.draft(BrokerAPITests.spec(caseId: w.caseB), by: w.inv2)  // another request of the agency

            func take(_ stream: AsyncStream<API.LiveEvent>, _ n: Int) async -> [API.LiveEvent] {
                var out: [API.LiveEvent] = []
                for await e in stream {
                    out.append(e)
                    if out.count == n { break }
                }
                return out
            }
            let seen = await take(mine, 2)
            #expect(seen.map(\.state) == ["submitted", "approved"] && seen.allSatisfy { $0.kind == .request && $0.requestId == id && $0.caseId == w.caseA })
            #expect(seen.map(\.actor) == ["inv", "appr"])
            #expect(seen[0].id < seen[1].id)
            let agencyWide = await take(agency, 3)
            #expect(agencyWide.map(\.state) == ["submitted", "approved", "draft"])
            // Resuming from an id replays what followed it, from the table.
            let replayed = try await feed.replay(LiveFeed.Filter(agency: w.p.inv.agency, requestId: id), after: before)
            #expect(replayed.map(\.id) == seen.map(\.id))
            #expect(try await feed.replay(LiveFeed.Filter(agency: w.p.inv.agency, requestId: id), after: seen[1].id).isEmpty)
            // Another agency heard nothing; nothing carries a target.
            let quiet = Task { await take(outside, 1) }
            try await Task.sleep(for: .milliseconds(300))
            #expect(feed.subscriberCount == 3)
            quiet.cancel()
            #expect(await quiet.value.isEmpty)
            let rows = try await client.query("SELECT data FROM live_events", logger: TestServices.logger).collect().map { try $0.decode(String.self) }
            #expect(!rows.contains { $0.contains("84912345678") })
            // The wire format, read back by the client's parser in awkward pieces.
            let frames = seen.map { Array(LiveFeed.frame($0).readableBytesView) }.joined()
            var parser = ServerSentEvents.Parser()
            var parsed: [ServerSentEvents.Event] = []
            for piece in Array(frames).chunked(7) { parsed += parser.consume(piece) }
            #expect(parsed.map(\.type) == ["request", "request"] && parsed.map(\.id) == seen.map { "\($0.id)" })
            #expect(try parsed.map { try JSONDecoder().decode(API.LiveEvent.self, from: Data($0.data.utf8)) } == seen)
        }
    }
}

extension Array {
    func chunked(_ n: Int) -> [[Element]] {
        stride(from: 0, to: count, by: n).map { Array(self[$0..<Swift.min($0 + n, count)]) }
    }
}
