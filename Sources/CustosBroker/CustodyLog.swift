import CustosCustody
import Foundation
import Logging
import Metrics
import NIOCore
import PostgresNIO
import Synchronization

/// Sequencing into the custody log. An event gets its index — its leaf position, dense from 0
/// — when it is appended, in the same transaction as whatever it records, so the state change
/// and its custody event commit or vanish together. Indices come from one counter row whose
/// lock is held until commit, which makes the committed events a gap-free prefix at every
/// instant; the Merkle tree integrates them afterwards, in batches (`CustodyIntegrator`).
public enum CustodyLog {
    /// Appends entries (canonical event JSON) and returns their indices. Take it last in a
    /// transaction: the counter lock then lives only until the commit that follows.
    public static func append(_ events: [(CustodyEvent, entry: [UInt8])], on conn: PostgresConnection, logger: Logger) async throws -> Range<Int64> {
        guard !events.isEmpty else { return 0..<0 }
        let n = Int64(events.count)
        let end = try await conn.query(
            "UPDATE custody_sequence SET next_index = next_index + \(n) WHERE id = 1 RETURNING next_index", logger: logger
        ).decode(Int64.self).first { _ in true } ?? 0
        let start = end - n
        let indices = Array(start..<end)
        let kinds = events.map(\.0.kind.rawValue)
        let requests = events.map { $0.0.subject.requestId?.uuidString ?? "" }
        let packages = events.map { $0.0.subject.packageId?.uuidString ?? "" }
        let entries = events.map { ByteBuffer(bytes: $0.entry) }
        try await conn.query("""
            INSERT INTO custody_events (idx, kind, request_id, package_id, entry)
            SELECT i, k, NULLIF(r, '')::uuid, NULLIF(p, '')::uuid, e
            FROM unnest(\(indices)::bigint[], \(kinds)::text[], \(requests)::text[], \(packages)::text[], \(entries)::bytea[]) AS t(i, k, r, p, e)
            """, logger: logger)
        return start..<end
    }
}

/// The custody events of one transaction, appended at its end (see `CustodyLog.append`).
public final class CustodyRecorder: Sendable {
    private let events = Mutex<[CustodyEvent]>([])

    public init() {}

    public func record(_ event: CustodyEvent) { events.withLock { $0.append(event) } }

    var recorded: [CustodyEvent] { events.withLock { $0 } }
}

extension PostgresClient {
    /// A transaction whose custody events are sequenced just before it commits.
    func custodyTransaction<R: Sendable>(
        logger: Logger, _ body: (PostgresConnection, CustodyRecorder) async throws -> R
    ) async throws -> R {
        try await transaction(logger: logger) { conn in
            let recorder = CustodyRecorder()
            let result = try await body(conn, recorder)
            let events = try recorder.recorded.map { ($0, entry: try $0.entry()) }
            _ = try await CustodyLog.append(events, on: conn, logger: logger)
            return result
        }
    }
}

/// Appends events that record no state change (views, downloads, exports) with group
/// commit: events arriving while a transaction is in flight go together in the next one.
/// `append` returns once the event is durable, with its index.
public actor CustodyAppender {
    let client: PostgresClient
    let logger: Logger
    let maximumBatch: Int
    private var pending: [(CustodyEvent, [UInt8], CheckedContinuation<Int64, any Error>)] = []
    private var flushing = false
    private let appended = Counter(label: "custos.custody.appended.events")
    private let batchSize = Recorder(label: "custos.custody.append.batch.events")

    public init(client: PostgresClient, maximumBatch: Int = 4096, logger: Logger) {
        self.client = client
        self.maximumBatch = maximumBatch
        self.logger = logger
    }

    @discardableResult
    public nonisolated func append(_ event: CustodyEvent) async throws -> Int64 {
        let entry = try event.entry()  // encoded by the caller's task, not inside the actor
        return try await submit(event, entry)
    }

    private func submit(_ event: CustodyEvent, _ entry: [UInt8]) async throws -> Int64 {
        try await withCheckedThrowingContinuation { continuation in
            pending.append((event, entry, continuation))
            if !flushing {
                flushing = true
                Task { await flush() }
            }
        }
    }

    private func flush() async {
        while !pending.isEmpty {
            let batch = Array(pending.prefix(maximumBatch))
            pending.removeFirst(batch.count)
            do {
                let range = try await client.transaction(logger: logger) { conn in
                    try await CustodyLog.append(batch.map { ($0.0, entry: $0.1) }, on: conn, logger: logger)
                }
                for (i, item) in batch.enumerated() { item.2.resume(returning: range.lowerBound + Int64(i)) }
                appended.increment(by: batch.count)
                batchSize.record(batch.count)
            } catch {
                for item in batch { item.2.resume(throwing: error) }
            }
        }
        flushing = false
    }
}
