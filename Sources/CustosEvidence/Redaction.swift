import Crypto
import CustosCanonicalJSON
import CustosCriteria
import CustosMerkle
import CustosModel
import Foundation

/// The content as investigators receive it when a package holds records they may not see
/// (SPEC §11): every record the judge finds outside the request's targets, categories or
/// window — quarantined — or cannot read is replaced, in place, by one line
///
///     {"withheld":{"leaf":"<hex RFC 9162 leaf hash of the record>","size":<bytes with its newline>}}
///
/// so every record shown can still be checked against its result's signed records Merkle root
/// (`RedactedContentVerifier`), though no longer against the chunk hashes. Auditors get the
/// content whole.
public struct ContentRedactor: Sendable {
    private var judge: PackageJudge
    private var lines = RecordLines()
    public private(set) var shown = 0
    public private(set) var withheld = 0

    public init(request: ApprovedRequest, manifest: Manifest) {
        judge = PackageJudge(request: request, manifest: manifest)
    }

    /// Content in slices of any size; `emit` receives the redacted bytes, a line at a time.
    public mutating func consume(_ bytes: UnsafeRawBufferPointer, emit: ([UInt8]) -> Void) {
        var pending = lines
        lines = RecordLines()
        pending.consume(bytes) { line($0, emit) }
        lines = pending
    }

    /// After the last slice: a last line without its newline, if any.
    public mutating func finish(emit: ([UInt8]) -> Void) {
        var pending = lines
        lines = RecordLines()
        pending.finish { line($0, emit) }
    }

    private mutating func line(_ record: UnsafeRawBufferPointer, _ emit: ([UInt8]) -> Void) {
        if judge.consume(record: record) {
            shown += 1
            emit(Array(record) + [0x0A])
        } else {
            withheld += 1
            emit(Self.marker(leaf: MerkleTree.leafHash(record), size: record.count + 1))
        }
    }

    static let prefix = Array("{\"withheld\":".utf8)

    static func marker(leaf: [UInt8], size: Int) -> [UInt8] {
        Array("{\"withheld\":{\"leaf\":\"\(leaf.hexString)\",\"size\":\(size)}}\n".utf8)
    }
}

/// Checks redacted content (`ContentRedactor`) against the signed manifest: every result's
/// record count and records Merkle root, each withheld record standing in by its leaf hash.
public struct RedactedContentVerifier: Sendable {
    public let manifest: Manifest
    public private(set) var shown = 0
    public private(set) var withheld = 0
    private var failures: [PackageVerification.Failure] = []
    private var lines = RecordLines()
    private var results: ResultCursor

    public init(manifest: Manifest) {
        self.manifest = manifest
        results = ResultCursor(manifest.results)
    }

    public mutating func consume(_ bytes: UnsafeRawBufferPointer) {
        var pending = lines
        lines = RecordLines()
        pending.consume(bytes) { line($0) }
        lines = pending
    }

    public mutating func finish() -> [PackageVerification.Failure] {
        var pending = lines
        lines = RecordLines()
        var trailing = false
        pending.finish { _ in trailing = true }
        if trailing { fail(.resultSize, "the content does not end with a newline") }
        if !results.done { fail(.contentSize, "the content ends before result \(results.index) does") }
        return failures + results.failures
    }

    private mutating func fail(_ code: PackageVerification.Failure.Code, _ detail: String) {
        if failures.count < 1000 { failures.append(.init(code: code, detail: detail)) }
    }

    private mutating func line(_ bytes: UnsafeRawBufferPointer) {
        guard !results.done else { return fail(.trailingData, "records continue past the last result") }
        let size: Int
        if bytes.starts(with: ContentRedactor.prefix) {
            guard let (leaf, n) = Self.marker(bytes) else { return fail(.resultSize, "a withheld-record line of result \(results.index) is malformed") }
            results.records.appendLeaf(leaf, size: n)
            size = n
            withheld += 1
        } else {
            results.records.append(record: bytes)
            size = bytes.count + 1
            shown += 1
        }
        results.remaining -= Int64(size)
        if results.remaining < 0 { fail(.resultSize, "result \(results.index) holds more bytes than declared") }
        if results.remaining <= 0 { results.advance() }
    }

    static func marker(_ bytes: UnsafeRawBufferPointer) -> ([UInt8], Int)? {
        guard case .object(let top)? = try? JSONParser.parse(bytes), top.count == 1, case .object(let w)? = top["withheld"], w.count == 2,
              let hex = w["leaf"]?.stringValue, let leaf = Digest.bytes(hex: hex), leaf.count == 32,
              case .number(let n)? = w["size"], n >= 1, n == n.rounded(), n < 1e15
        else { return nil }
        return (leaf, Int(n))
    }

}
