/// Where a judge keeps the records' digests to count duplicates: in memory (`DigestSet`, the
/// default), or somewhere that bounds memory (the connector spills them to disk).
public protocol DigestStore: Sendable {
    /// Adds one digest (the first 128 bits of a record's SHA-256); false when it is known
    /// now to have been seen before.
    mutating func insert(_ a: UInt64, _ b: UInt64) -> Bool
    /// The duplicates that could only be counted at the end.
    mutating func finish() -> Int
}

/// The records seen so far, as the first 128 bits of their SHA-256: an open-addressing table
/// indexed by those bits directly (they are already uniformly spread, so no hashing), which
/// is what lets the duplicate search keep pace with a million records a second.
public struct DigestSet: DigestStore {
    private var slots: [(UInt64, UInt64)]
    private var mask: Int
    public private(set) var count = 0
    /// (0, 0) marks an empty slot; a digest of that value is remembered apart.
    private var hasZero = false

    public init(capacity: Int = 1 << 16) {
        var size = 16
        while size < capacity * 2 { size <<= 1 }
        slots = Array(repeating: (0, 0), count: size)
        mask = size - 1
    }

    /// Adds the digest; false if it was there already.
    public mutating func insert(_ a: UInt64, _ b: UInt64) -> Bool {
        if a == 0 && b == 0 {
            defer { hasZero = true }
            return !hasZero
        }
        if (count + 1) * 2 > slots.count { grow() }
        var i = Int(truncatingIfNeeded: a) & mask
        while true {
            let s = slots[i]
            if s.0 == 0 && s.1 == 0 {
                slots[i] = (a, b)
                count += 1
                return true
            }
            if s.0 == a && s.1 == b { return false }
            i = (i + 1) & mask
        }
    }

    private mutating func grow() {
        let old = slots
        slots = Array(repeating: (0, 0), count: old.count * 2)
        mask = slots.count - 1
        count = 0
        for s in old where !(s.0 == 0 && s.1 == 0) { _ = insert(s.0, s.1) }
    }
}

extension DigestSet {
    public mutating func finish() -> Int { 0 }
}
