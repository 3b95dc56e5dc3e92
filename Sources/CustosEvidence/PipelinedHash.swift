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
    // @unchecked: `hash` and `count` are read and written only on `queue`; `held` only on the
    // caller's thread.
    private var hash = SHA256()
    private var count: Int64 = 0
    private let queue = DispatchQueue(label: "custos-hash", qos: .userInitiated)
    private let room: DispatchSemaphore
    private let depth: Int
    /// The caller keeps the last slices, so that it (not the hashing thread) frees them: memory
    /// then goes back to the caller's allocator arena instead of growing a second one.
    private var held: [[UInt8]] = []

    public init(depth: Int = 2) {
        self.depth = max(1, depth)
        room = DispatchSemaphore(value: self.depth)
    }

    public func consume(_ bytes: [UInt8]) {
        room.wait()
        held.append(bytes)
        if held.count > depth + 1 { held.removeFirst() }
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
