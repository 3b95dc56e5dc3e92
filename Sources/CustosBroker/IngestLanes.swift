import CustosKafka
import Synchronization

/// Where one Kafka partition's messages stand in the broker: read in offset order, applied
/// in any order (each request's in order, different requests in parallel).
///
/// The offset stored for the partition is its low watermark — the first message read and not
/// yet applied — so a crash re-reads every message not applied and skips none (each is
/// idempotent by id). Pure: unit-tested without Kafka.
struct PartitionProgress: Sendable {
    /// One message read: its place in the partition and its size in bytes.
    struct Ticket: Sendable, Hashable {
        /// Counts the times the partition's offsets went back (a rebalance gave it back to this
        /// consumer from its committed offset): a ticket from before is applied, but moves no
        /// watermark.
        var generation: Int
        var offset: Int64
        var bytes: Int
    }

    private(set) var generation = 0
    /// Offsets read in this generation, in order, from `head` on.
    private var read: [Int64] = []
    private var head = 0
    private var applied: Set<Int64> = []
    private var lastRead: Int64 = -1

    init() {}

    /// A message read at `offset`, of `bytes` bytes.
    mutating func read(offset: Int64, bytes: Int) -> Ticket {
        if offset <= lastRead {
            // Read again from an earlier offset: what this generation waited for comes again.
            generation += 1
            read.removeAll()
            head = 0
            applied.removeAll()
        }
        lastRead = offset
        read.append(offset)
        return Ticket(generation: generation, offset: offset, bytes: bytes)
    }

    /// A message applied. Returns the offset to store (the first one not applied) when the
    /// low watermark moved, else nil.
    mutating func applied(_ ticket: Ticket) -> Int64? {
        guard ticket.generation == generation else { return nil }
        applied.insert(ticket.offset)
        var next: Int64?
        while head < read.count, applied.remove(read[head]) != nil {
            next = read[head] + 1
            head += 1
        }
        if head >= 1024, head * 2 >= read.count {
            read.removeFirst(head)
            head = 0
        }
        return next
    }
}

/// One consumer's partitions: what each has read and applied, and the offsets stored; and
/// its buffer: the bytes read and not yet applied. Once `bufferLimit` bytes wait, reading
/// stops until half of them are applied, so memory stays bounded (librdkafka's own read-ahead,
/// `queued.max.messages.kbytes`, is kept small for the same reason). The urgent return lane has
/// a consumer and a buffer of its own, so a full bulk buffer never keeps an emergency unread.
final class IngestSource: Sendable {
    let consumer: KafkaConsumer
    /// The urgent return lane's consumer (`custos.from.<provider>.urgent`).
    let urgent: Bool
    /// Bytes read and not yet applied past which reading waits.
    let bufferLimit: Int
    private let state = Mutex(State())

    private struct State {
        var partitions: [PartitionKey: PartitionProgress] = [:]
        var bytesInFlight = 0
        var waiting: CheckedContinuation<Void, Never>?
        /// Shutdown: reading never waits again.
        var released = false
    }

    struct PartitionKey: Hashable, Sendable {
        var topic: String
        var partition: Int32
    }

    init(consumer: KafkaConsumer, urgent: Bool, bufferLimit: Int) {
        self.consumer = consumer
        self.urgent = urgent
        self.bufferLimit = bufferLimit
    }

    /// Notes `message` as read.
    func read(_ message: KafkaMessage) -> PartitionProgress.Ticket {
        let key = PartitionKey(topic: message.topic, partition: message.partition)
        // Every byte the message holds, so that none can be sent that the buffer does not count.
        let bytes = message.key.count + message.value.count + message.headers.reduce(0) { $0 + $1.key.utf8.count + $1.value.count } + message.topic.utf8.count + 64
        return state.withLock { s in
            s.bytesInFlight += bytes
            return s.partitions[key, default: PartitionProgress()].read(offset: message.offset, bytes: bytes)
        }
    }

    /// Returns once fewer than `bufferLimit` bytes wait (at once, mostly). One reader waits at a time.
    func room() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                guard s.bytesInFlight >= bufferLimit, !s.released else { return true }
                s.waiting = c
                return false
            }
            if now { c.resume() }
        }
    }

    /// Notes `message` as applied: stores its partition's new low watermark, if it moved, and
    /// lets reading go on once half the buffer is free.
    func applied(_ message: KafkaMessage, _ ticket: PartitionProgress.Ticket) throws {
        let key = PartitionKey(topic: message.topic, partition: message.partition)
        let (next, wake) = state.withLock { s -> (Int64?, CheckedContinuation<Void, Never>?) in
            s.bytesInFlight -= ticket.bytes
            var wake: CheckedContinuation<Void, Never>?
            if s.bytesInFlight <= bufferLimit / 2 {
                wake = s.waiting
                s.waiting = nil
            }
            return (s.partitions[key]?.applied(ticket), wake)
        }
        wake?.resume()
        if let next { try consumer.store(topic: key.topic, partition: key.partition, next: next) }
    }

    /// Lets a reader waiting for room go, and any later one (at shutdown).
    func release() {
        state.withLock { s -> CheckedContinuation<Void, Never>? in
            s.released = true
            defer { s.waiting = nil }
            return s.waiting
        }?.resume()
    }

    /// Bytes read and not yet applied.
    var bytesInFlight: Int { state.withLock { $0.bytesInFlight } }
}

/// A message to apply, with where it came from.
struct IngestWork: Sendable {
    let message: KafkaMessage
    let source: IngestSource
    let ticket: PartitionProgress.Ticket
}

/// The broker's ingest lanes: one per request (the Kafka key is the request id), each applied
/// in the order its messages were read, one message at a time; different lanes in parallel,
/// by a bounded number of workers. Lanes of emergency requests are taken before any other, and
/// urgent-only workers take nothing else, so that no bulk delivery delays an emergency. A lane
/// is put back at the end of the queue after each message: a package of thousands of chunks
/// shares the workers with every other request instead of holding one for its whole length.
/// `Work`: what a lane carries (`IngestWork` in the broker).
final class IngestLanes<Work: Sendable>: Sendable {
    private struct Lane {
        /// Messages from `head` on; those before it were handed out and are let go (nil), so
        /// that a lane that never empties — a long package — holds only what still waits.
        var queue: [Work?] = []
        var head = 0
        var urgent = false
        /// A worker holds it (its next message waits for that one).
        var running = false
        /// It is in one of the runnable queues.
        var queued = false
        var isEmpty: Bool { head == queue.count }
        mutating func pop() -> Work {
            let w = queue[head]!
            queue[head] = nil
            head += 1
            if head == queue.count {
                queue.removeAll(keepingCapacity: true)
                head = 0
            } else if head >= 64, head * 2 >= queue.count {
                queue.removeFirst(head)
                head = 0
            }
            return w
        }
    }

    private struct Waiter {
        var urgentOnly: Bool
        var continuation: CheckedContinuation<(String, Work)?, Never>
    }

    private struct State {
        var lanes: [String: Lane] = [:]
        var runnable = FIFO()
        var runnableUrgent = FIFO()
        var waiting: [Waiter] = []
        var closed = false

        /// Hands runnable lanes to waiting workers; returns the hand-overs to resume.
        mutating func match() -> [(CheckedContinuation<(String, Work)?, Never>, (String, Work))] {
            var out: [(CheckedContinuation<(String, Work)?, Never>, (String, Work))] = []
            var i = 0
            while i < waiting.count {
                let w = waiting[i]
                guard let key = runnableUrgent.pop() ?? (w.urgentOnly ? nil : runnable.pop()) else { i += 1; continue }
                lanes[key]!.queued = false
                lanes[key]!.running = true
                out.append((w.continuation, (key, lanes[key]!.pop())))
                waiting.remove(at: i)
            }
            return out
        }

        mutating func enqueue(_ key: String) {
            guard let lane = lanes[key], !lane.running, !lane.queued, !lane.isEmpty else { return }
            lanes[key]!.queued = true
            if lane.urgent { runnableUrgent.push(key) } else { runnable.push(key) }
        }
    }

    /// A queue of lane keys.
    private struct FIFO {
        var items: [String] = []
        var head = 0
        var isEmpty: Bool { head == items.count }
        mutating func push(_ s: String) { items.append(s) }
        mutating func pop() -> String? {
            guard head < items.count else { return nil }
            let s = items[head]
            head += 1
            if head >= 256, head * 2 >= items.count {
                items.removeFirst(head)
                head = 0
            }
            return s
        }
        mutating func remove(_ s: String) {
            if let i = items[head...].firstIndex(of: s) { items.remove(at: i) }
        }
    }

    private let state = Mutex(State())

    init() {}

    /// Queues `work` on the lane `key`. `urgent`: the lane carries an emergency's messages
    /// (from then on it stays urgent).
    func submit(_ work: Work, lane key: String, urgent: Bool) {
        let handOver = state.withLock { s -> [(CheckedContinuation<(String, Work)?, Never>, (String, Work))] in
            guard !s.closed else { return [] }
            var lane = s.lanes[key] ?? Lane()
            let promoted = urgent && !lane.urgent && lane.queued
            lane.urgent = lane.urgent || urgent
            lane.queue.append(work)
            s.lanes[key] = lane
            if promoted {
                s.runnable.remove(key)
                s.lanes[key]!.queued = false
            }
            s.enqueue(key)
            return s.match()
        }
        for (c, w) in handOver { c.resume(returning: w) }
    }

    /// The next message for a worker, with its lane's key; nil once the lanes are closed.
    /// `urgentOnly`: take only urgent lanes' messages.
    func next(urgentOnly: Bool) async -> (String, Work)? {
        await withCheckedContinuation { (c: CheckedContinuation<(String, Work)?, Never>) in
            let handOver = state.withLock { s -> [(CheckedContinuation<(String, Work)?, Never>, (String, Work))]? in
                guard !s.closed else { return nil }
                s.waiting.append(Waiter(urgentOnly: urgentOnly, continuation: c))
                return s.match()
            }
            guard let handOver else { return c.resume(returning: nil) }
            for (c, w) in handOver { c.resume(returning: w) }
        }
    }

    /// The worker is done with the lane's message: the lane's next one may go.
    func done(_ key: String) {
        let handOver = state.withLock { s -> [(CheckedContinuation<(String, Work)?, Never>, (String, Work))] in
            guard s.lanes[key] != nil else { return [] }
            s.lanes[key]!.running = false
            if s.lanes[key]!.isEmpty {
                s.lanes[key] = nil
            } else {
                s.enqueue(key)
            }
            return s.match()
        }
        for (c, w) in handOver { c.resume(returning: w) }
    }

    /// No more work is handed out; waiting workers get nil. Messages not handed out are not
    /// applied (their offsets are not stored: they are read again).
    func close() {
        let waiters = state.withLock { s -> [Waiter] in
            s.closed = true
            defer { s.waiting = [] }
            return s.waiting
        }
        for w in waiters { w.continuation.resume(returning: nil) }
    }

    var isClosed: Bool { state.withLock { $0.closed } }

    /// Messages queued and not yet handed to a worker, and lanes open.
    var depth: (messages: Int, lanes: Int) {
        state.withLock { s in (s.lanes.values.reduce(0) { $0 + $1.queue.count - $1.head }, s.lanes.count) }
    }
}
