import Crypto

/// One record's Merkle leaf digest, as the records root hashes it (RFC 9162 §2.1.1:
/// SHA-256 of 0x00 ‖ the record's line without its newline; SPEC §6), kept to its first 128
/// bits, with where the line ends in the package's content. The content checks compute it
/// once and hand it to the judge, whose duplicate search uses it as the record's key
/// (`PackageJudge.consume(content:leaves:)`), so that each record is hashed once.
public struct RecordLeaf: Sendable, Hashable {
    /// Offset in the content (from its first byte) of the newline that ends the record.
    public var end: Int64
    /// The line's length in bytes, without its newline.
    public var length: Int
    /// The leaf digest's bytes 0..<8 and 8..<16, as stored in memory (unaligned loads).
    public var a: UInt64
    public var b: UInt64

    public init(end: Int64, length: Int, a: UInt64, b: UInt64) {
        self.end = end
        self.length = length
        self.a = a
        self.b = b
    }

    /// A leaf digest's first 128 bits (32-byte SHA-256 digest in).
    public init(end: Int64, length: Int, digest: SHA256Digest) {
        let (a, b) = digest.withUnsafeBytes { ($0.loadUnaligned(as: UInt64.self), $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)) }
        self.init(end: end, length: length, a: a, b: b)
    }

    /// The key of `line` (without its newline), computed here: the leaf digest's first 128 bits.
    public static func key(_ line: UnsafeRawBufferPointer) -> (UInt64, UInt64) {
        var h = SHA256()
        withUnsafeBytes(of: UInt8(0)) { h.update(bufferPointer: $0) }
        h.update(bufferPointer: line)
        return h.finalize().withUnsafeBytes { ($0.loadUnaligned(as: UInt64.self), $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)) }
    }
}
