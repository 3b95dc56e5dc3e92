import Logging
import ServiceLifecycle
import Synchronization

/// Opens once; everything waiting on it resumes then. Background services wait on it until
/// the migrations have run.
public final class Gate: Sendable {
    private let state: Mutex<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>

    public init(open: Bool = false) { state = Mutex((open, [])) }

    public func open() {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.open = true
            defer { s.waiters = [] }
            return s.waiters
        }
        waiters.forEach { $0.resume() }
    }

    public func wait() async {
        await withCheckedContinuation { c in
            let ready = state.withLock { s -> Bool in
                if s.open { return true }
                s.waiters.append(c)
                return false
            }
            if ready { c.resume() }
        }
    }
}

/// Wakes one waiter early: the outbox relay sleeps on it between polls, and a transaction
/// that queued an urgent message signals it after committing, so the message leaves at once
/// instead of at the next poll. A signal with nobody waiting is kept for the next wait.
public final class Wakeup: Sendable {
    private struct State {
        var signalled = false
        var waiter: CheckedContinuation<Void, Never>?
        var generation = 0
    }
    private let state = Mutex(State())

    public init() {}

    public func signal() {
        let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            guard let w = s.waiter else { s.signalled = true; return nil }
            s.waiter = nil
            return w
        }
        waiter?.resume()
    }

    /// Returns when signalled (at once if a signal came since the last wait), after `timeout`,
    /// or when the task is cancelled. One waiter at a time.
    public func wait(timeout: Duration) async {
        let generation = state.withLock { s -> Int in s.generation += 1; return s.generation }
        let timer = Task {
            try? await Task.sleep(for: timeout)
            self.expire(generation)
        }
        defer { timer.cancel() }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let now = state.withLock { s -> Bool in
                    if s.signalled || s.generation != generation || Task.isCancelled {
                        s.signalled = false
                        return true
                    }
                    s.waiter = c
                    return false
                }
                if now { c.resume() }
            }
        } onCancel: {
            self.expire(generation)
        }
    }

    /// Ends the wait of `generation`: resumes it if it is waiting, or makes it return at once.
    private func expire(_ generation: Int) {
        let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            guard s.generation == generation else { return nil }
            guard let w = s.waiter else { s.generation += 1; return nil }
            s.waiter = nil
            return w
        }
        waiter?.resume()
    }
}

/// The loop of the broker's polling workers (outbox relay, legal clocks, webhooks): once
/// `ready`, runs `pass` until cancelled or shut down gracefully. A pass that found nothing to
/// do (returned 0) is followed by `idle`; a failed one is logged and retried after a growing
/// back-off.
func runPolling(ready: Gate, logger: Logger, failure message: Logger.Message,
                pass: @escaping @Sendable () async throws -> Int, idle: @escaping @Sendable () async throws -> Void) async throws {
    await ready.wait()
    await cancelWhenGracefulShutdown {
        var failures = 0
        while !Task.isCancelled {
            do {
                let n = try await pass()
                failures = 0
                if n == 0 {
                    try await idle()
                    try Task.checkCancellation()
                }
            } catch is CancellationError {
                return
            } catch {
                failures += 1
                logger.error(message, metadata: [LogKey.error: "\(loggable(error))"])
                try? await Task.sleep(for: Backoff.delay(attempt: failures))
            }
        }
    }
}
