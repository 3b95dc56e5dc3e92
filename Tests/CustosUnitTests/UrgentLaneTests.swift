@testable import CustosBroker
@testable import CustosConnector
import Foundation
import Testing

/// The pieces that keep urgent work from waiting: the relay's wake-up and the connector's
/// two-lane job queue.
@Suite("Urgent lane", .timeLimit(.minutes(1)))
struct UrgentLaneTests {
    @Test func aSignalWakesTheWaiterAtOnceAndIsKeptWhenNobodyWaits() async throws {
        let wakeup = Wakeup()
        let clock = ContinuousClock()
        // Kept for the next wait.
        wakeup.signal()
        var elapsed = await clock.measure { await wakeup.wait(timeout: .seconds(10)) }
        #expect(elapsed < .seconds(1))
        // Nobody signals: the time-out ends the wait.
        elapsed = await clock.measure { await wakeup.wait(timeout: .milliseconds(200)) }
        #expect(elapsed >= .milliseconds(200) && elapsed < .seconds(5))
        // A signal during the wait ends it early.
        let signaller = Task {
            try await Task.sleep(for: .milliseconds(100))
            wakeup.signal()
        }
        elapsed = await clock.measure { await wakeup.wait(timeout: .seconds(20)) }
        try await signaller.value
        #expect(elapsed < .seconds(5))
    }

    @Test func cancellingTheWaiterEndsTheWait() async {
        let wakeup = Wakeup()
        let waiter = Task { await wakeup.wait(timeout: .seconds(30)) }
        try? await Task.sleep(for: .milliseconds(50))
        waiter.cancel()
        let elapsed = await ContinuousClock().measure { await waiter.value }
        #expect(elapsed < .seconds(5))
    }

    @Test func urgentJobsAreHandedOutFirstAndUrgentWorkersTakeNothingElse() async {
        let queue = JobQueue()
        let normal = (0..<3).map { _ in UUID() }, urgent = (0..<2).map { _ in UUID() }
        normal.forEach { queue.schedule($0, urgent: false) }
        urgent.forEach { queue.schedule($0, urgent: true) }
        queue.schedule(normal[0], urgent: false)  // already queued: not twice
        #expect(await queue.next(urgentOnly: false) == urgent[0])
        #expect(await queue.next(urgentOnly: true) == urgent[1])
        #expect(await queue.next(urgentOnly: false) == normal[0])
        // An urgent-only worker waits for urgent work though normal jobs are queued.
        let urgentWorker = Task { await queue.next(urgentOnly: true) }
        try? await Task.sleep(for: .milliseconds(50))
        let late = UUID()
        queue.schedule(late, urgent: true)
        #expect(await urgentWorker.value == late)
        #expect(await queue.next(urgentOnly: false) == normal[1])
        queue.finish()
        #expect(await queue.next(urgentOnly: true) == nil)
    }
}
