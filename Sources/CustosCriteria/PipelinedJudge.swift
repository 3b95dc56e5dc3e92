import Dispatch

/// Runs a `PackageJudge` on a thread of its own, so that judging the four criteria overlaps
/// with the other work done on the same content: `custos verify` hashes the chunks and builds
/// the records trees (SPEC §8) meanwhile, on the other core.
///
/// Content slices are judged in the order given. At most `depth` slices wait at once, so
/// memory stays bounded by `depth` × the slice size (`custos verify` reads 1 MiB at a time: 4 MiB by default).
/// `consume` blocks the caller while the queue is full: call it from a thread of your own,
/// never from Swift concurrency's cooperative pool. The verdict is the one a `PackageJudge`
/// fed on the caller's thread would reach: the same code sees the same bytes in the same order.
public final class PipelinedJudge: @unchecked Sendable {
    // @unchecked: `judge` is read and written only on `queue`.
    private var judge: PackageJudge
    private let queue = DispatchQueue(label: "custos-judge", qos: .userInitiated)
    private let room: DispatchSemaphore

    /// `depth`: how many content slices may wait for the judge (at least 1).
    public init(_ judge: PackageJudge, depth: Int = 4) {
        self.judge = judge
        room = DispatchSemaphore(value: max(1, depth))
    }

    /// Queues one slice of content (record lines, cut anywhere), with the leaf digests of
    /// the records that end in it (`PackageJudge.consume(content:leaves:)`). Blocks while
    /// `depth` slices wait.
    public func consume(content: [UInt8], leaves: [RecordLeaf] = []) {
        room.wait()
        queue.async { [self] in
            content.withUnsafeBytes { judge.consume(content: $0, leaves: leaves) }
            room.signal()
        }
    }

    /// Waits until every queued slice is judged, and returns the judge, ready for `finish`.
    public func drain() -> PackageJudge {
        queue.sync { judge }
    }
}
