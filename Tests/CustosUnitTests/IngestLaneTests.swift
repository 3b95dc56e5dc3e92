@testable import CustosBroker
import Foundation
import Synchronization
import Testing

/// The broker's ingest lanes (issue 15): a partition's offset never passes a message not yet
/// applied, each request's messages are applied in order while requests go in parallel, and an
/// emergency's lane is taken before any bulk one.
@Suite("Ingest lanes", .timeLimit(.minutes(1)))
struct IngestLaneTests {
    @Test func theStoredOffsetIsTheFirstMessageNotYetAppliedWhateverTheOrder() {
        var p = PartitionProgress()
        let t = (10..<16).map { p.read(offset: Int64($0), bytes: 100) }
        do { let v = p.applied(t[2]); #expect(v == nil) }  // 10 and 11 still out
        do { let v = p.applied(t[1]); #expect(v == nil) }
        do { let v = p.applied(t[0]); #expect(v == 13) }  // 10, 11, 12 applied: 13 is next
        do { let v = p.applied(t[5]); #expect(v == nil) }
        do { let v = p.applied(t[3]); #expect(v == 14) }
        do { let v = p.applied(t[4]); #expect(v == 16) }
        // A rebalance gives the partition back from an earlier offset: a new generation, and
        // an old ticket applied late moves nothing.
        let late = p.read(offset: 16, bytes: 10)
        let again = p.read(offset: 14, bytes: 10)
        #expect(again.generation == late.generation + 1)
        do { let v = p.applied(late); #expect(v == nil) }
        do { let v = p.applied(again); #expect(v == 15) }
    }

    @Test func manyOffsetsKeepTheTrackerSmallAndRight() {
        var p = PartitionProgress()
        var stored: Int64 = 0
        for o in 0..<100_000 {
            let t = p.read(offset: Int64(o), bytes: 1)
            if let n = p.applied(t) { stored = n }
        }
        #expect(stored == 100_000)
    }

    /// Lanes: one request's messages in order, one at a time; requests in parallel; urgent first.
    @Test func eachLaneIsAppliedInOrderOneAtATimeAndUrgentLanesGoFirst() async throws {
        let lanes = IngestLanes<Int>()
        // Queued before any worker asks: bulk lane "b" with 5, urgent lane "u" with 2.
        for i in 0..<5 { lanes.submit(i, lane: "b", urgent: false) }
        lanes.submit(100, lane: "u", urgent: true)
        lanes.submit(101, lane: "u", urgent: true)
        // A worker takes the urgent lane first.
        let first = try #require(await lanes.next(urgentOnly: false))
        #expect(first.0 == "u" && first.1 == 100)
        // Another worker gets bulk work, not u's second message while u's first is out.
        let second = try #require(await lanes.next(urgentOnly: false))
        #expect(second.0 == "b" && second.1 == 0)
        lanes.done("u")
        let third = try #require(await lanes.next(urgentOnly: true))
        #expect(third.0 == "u" && third.1 == 101)
        lanes.done("u")
        lanes.done("b")
        // An urgent-only worker waits while only bulk work is left.
        let urgentOnly = Task { await lanes.next(urgentOnly: true) }
        var order: [Int] = []
        for _ in 0..<4 {
            let w = try #require(await lanes.next(urgentOnly: false))
            order.append(w.1)
            lanes.done(w.0)
        }
        #expect(order == [1, 2, 3, 4])
        // A lane that was bulk becomes urgent when an emergency message comes for it.
        lanes.submit(200, lane: "late", urgent: true)
        let w = await urgentOnly.value
        #expect(w?.0 == "late" && w?.1 == 200)
        lanes.close()
        #expect(await lanes.next(urgentOnly: false) == nil)
    }

    /// A lane that never empties (a long package: the reader keeps adding while workers take)
    /// lets go of each message once handed out; it used to keep every one until it emptied,
    /// and a 2 GB package then held 2 GB.
    @Test func aLaneThatNeverEmptiesLetsGoOfWhatItHandedOut() async throws {
        final class Box: Sendable { let alive = Mutex(0) }
        final class Tracked: Sendable {
            let box: Box
            init(_ box: Box) { self.box = box; box.alive.withLock { $0 += 1 } }
            deinit { box.alive.withLock { $0 -= 1 } }
        }
        let box = Box()
        let lanes = IngestLanes<Tracked>()
        for _ in 0..<10 { lanes.submit(Tracked(box), lane: "bulk", urgent: false) }
        for _ in 0..<5_000 {
            lanes.submit(Tracked(box), lane: "bulk", urgent: false)
            let taken = try #require(await lanes.next(urgentOnly: false))
            lanes.done(taken.0)
        }
        // Ten wait in the lane; none of the 5,000 handed out is kept.
        let alive = box.alive.withLock { $0 }
        #expect(alive == 10, "\(alive) messages alive, 10 waiting")
        #expect(lanes.depth.messages == 10)
        lanes.close()
    }

    @Test func workersApplyEveryMessageOnceEachRequestInOrder() async {
        let lanes = IngestLanes<(lane: Int, seq: Int)>()
        final class Tally: Sendable {
            let seen = Mutex<[Int: [Int]]>([:])
            let running = Mutex<Set<Int>>([])
            let overlaps = Mutex(0)
        }
        let tally = Tally()
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<6 {
                group.addTask {
                    while let (key, w) = await lanes.next(urgentOnly: false) {
                        if !tally.running.withLock({ $0.insert(w.lane).inserted }) { tally.overlaps.withLock { $0 += 1 } }
                        await Task.yield()
                        tally.seen.withLock { $0[w.lane, default: []].append(w.seq) }
                        tally.running.withLock { _ = $0.remove(w.lane) }
                        lanes.done(key)
                    }
                }
            }
            for seq in 0..<200 {
                for lane in 0..<10 { lanes.submit((lane, seq), lane: "r\(lane)", urgent: lane == 0) }
                if seq % 50 == 0 { await Task.yield() }
            }
            while lanes.depth.lanes > 0 { try? await Task.sleep(for: .milliseconds(5)) }
            lanes.close()
        }
        let overlapping = tally.overlaps.withLock { $0 }, applied = tally.seen.withLock { $0 }
        #expect(overlapping == 0, "a lane ran two messages at once")
        for lane in 0..<10 { #expect(applied[lane] == Array(0..<200)) }
    }
}
