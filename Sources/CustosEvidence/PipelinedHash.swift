import Crypto
import Dispatch

/// SHA-256 of a stream, computed on a thread of its own, so that hashing a whole file
/// overlaps with the other work done on the same bytes: `custos verify` hashes the content
/// for `case.jsonld` on one core while it checks the chunks and records on the other.
///
/// Slices are hashed in the order given; at most `depth` wait at once (memory: `depth` × the
/// slice size). `consume` blocks the caller while the queue is full: call it from a thread of
/// your own, never from Swift concurrency's cooperative pool.
public final class PipelinedHash: @unchecked Sendable {
    // @unchecked: `hash` and `count` are read and written only on `queue`.
    private var hash = SHA256()
    private var count: Int64 = 0
    private let queue = DispatchQueue(label: "custos-hash", qos: .userInitiated)
    private let room: DispatchSemaphore

    public init(depth: Int = 4) {
        room = DispatchSemaphore(value: max(1, depth))
    }

    public func consume(_ bytes: [UInt8]) {
        room.wait()
        queue.async { [self] in
            hash.update(data: bytes)
            count += Int64(bytes.count)
            room.signal()
        }
    }

    /// Waits for every queued slice: the SHA-256 (lower-case hex) and the byte count.
    public func finish() -> (sha256: String, count: Int64) {
        queue.sync { (hash.finalize().map { String(format: "%02x", $0) }.joined(), count) }
    }
}
