import CustosCanonicalJSON
import CustosCriteria
import CustosCustody
import CustosEvidence
import CustosModel
import CustosPKI
import Foundation
import Testing

/// No edit of a bundle — a member dropped, replaced, added, edited or a single byte flipped
/// anywhere — leaves `custos verify`'s outcome better than the untouched bundle's (SPEC §8):
/// a valid bundle is no longer valid, and an authentic but inadmissible one becomes invalid,
/// never valid or still merely inadmissible.
///
/// Thousands of verifications: the suite runs its tests one at a time, each verification on a
/// thread of its own (`verify`).
@Suite("Export bundles: no edit improves the outcome", .serialized)
struct BundleMutationTests {

    /// One tar entry: where its header and data sit in the file.
    struct Entry {
        var name: String
        var header: Int
        var data: Int
        var size: Int
        var end: Int { data + (size + 511) / 512 * 512 }
    }

    static func entries(_ tar: [UInt8]) -> [Entry] {
        var out: [Entry] = []
        var at = 0
        while at + 512 <= tar.count, tar[at..<at + 512].contains(where: { $0 != 0 }) {
            let name = String(decoding: tar[at..<at + 100].prefix { $0 != 0 }, as: UTF8.self)
            let size = Int(String(decoding: tar[at + 124..<at + 135], as: UTF8.self), radix: 8)!
            out.append(Entry(name: name, header: at, data: at + 512, size: size))
            at = out.last!.end
        }
        return out
    }

    /// A bundle made again from its members (headers and padding as custos writes them).
    static func rebuild(_ members: [(String, [UInt8])]) -> [UInt8] {
        members.flatMap { Tar.file($0.0, $0.1) } + Tar.end
    }

    static func members(_ tar: [UInt8]) -> [(String, [UInt8])] {
        entries(tar).map { ($0.name, Array(tar[$0.data..<$0.data + $0.size])) }
    }

    /// The trust anchors of the vectors, read once.
    static let anchors: (provider: String, tsa: String, custody: String, witnesses: [CertificateInfo])? = try? (
        BundleVectorTests.trust("provider-ca.pem"), BundleVectorTests.trust("tsa-ca.pem"), BundleVectorTests.trust("custody-ca.pem"),
        CustodyVerifier.certificates(pem: BundleVectorTests.trust("witnesses.pem")))

    /// Verifies on a thread of its own, so that thousands of verifications never hold the
    /// cooperative pool that the timing-sensitive integration tests share (a legal clock test
    /// missed its second that way); the expectations stay in the test's task.
    static func verify(_ bytes: [UInt8]) async throws -> BundleReport {
        struct TrustAnchorsUnreadable: Error {}
        guard let a = anchors else { throw TrustAnchorsUnreadable() }
        return await withCheckedContinuation { c in
            Thread {
                c.resume(returning: BundleVectorTests.verify(bytes, providerTrust: a.provider, tsaTrust: a.tsa, custodyTrust: a.custody, witnesses: a.witnesses))
            }.start()
        }
    }

    /// The outcome must be worse than `original`'s: a valid bundle becomes anything else; an
    /// inadmissible one becomes invalid or unusable.
    static func isWorse(_ r: BundleReport, than original: BundleReport.Outcome) -> Bool {
        switch original {
        case .valid: r.outcome != .valid
        case .inadmissible: r.outcome == .invalid || r.outcome == .unusable
        case .invalid, .unusable: r.outcome == .invalid || r.outcome == .unusable
        }
    }

    static let subjects = ["valid/standard.tar", "valid/cannot-execute.tar", "invalid/criteria-correct-target-out-of-scope.tar",
                           "invalid/criteria-complete-missing-result.tar", "invalid/criteria-clean-duplicate-record.tar",
                           "invalid/criteria-live-delivered-late.tar"]

    static func load(_ path: String) throws -> [UInt8] {
        Array(try Data(contentsOf: BundleVectorTests.vectors.appendingPathComponent(path)))
    }

    /// Each member dropped, edited (one byte changed, headers remade), flipped in place,
    /// replaced by another vector's, and an extra member added.
    @Test(arguments: subjects)
    func everyMemberDroppedEditedFlippedOrReplaced(_ path: String) async throws {
        let tar = try Self.load(path)
        let original = try await Self.verify(tar).outcome
        #expect(original == (path.hasPrefix("valid/") ? .valid : .inadmissible))
        let members = Self.members(tar)
        let other = Self.members(try Self.load(path == "valid/standard.tar" ? "invalid/criteria-live-delivered-late.tar" : "valid/standard.tar"))
        for (i, (name, bytes)) in members.enumerated() {
            var dropped = members
            dropped.remove(at: i)
            #expect(Self.isWorse(try await Self.verify(Self.rebuild(dropped)), than: original), "\(path): \(name) dropped")
            if !bytes.isEmpty {
                for position in Set([0, bytes.count / 2, bytes.count - 1]) {
                            var edited = members
                    edited[i].1[position] = edited[i].1[position] == UInt8(ascii: "0") ? UInt8(ascii: "1") : UInt8(ascii: "0")
                    #expect(Self.isWorse(try await Self.verify(Self.rebuild(edited)), than: original), "\(path): \(name) edited at \(position)")
                    var flipped = tar
                    flipped[Self.entries(tar)[i].data + position] ^= 0x20
                    #expect(Self.isWorse(try await Self.verify(flipped), than: original), "\(path): \(name) flipped at \(position)")
                }
            }
            let leaf = name.split(separator: "/").last.map(String.init) ?? name
            if let replacement = other.first(where: { $0.0.hasSuffix("/" + leaf) }), replacement.1 != bytes {
                var replaced = members
                replaced[i].1 = replacement.1
                #expect(Self.isWorse(try await Self.verify(Self.rebuild(replaced)), than: original), "\(path): \(name) replaced by another bundle's")
            }
        }
        let folder = String(members[0].0.split(separator: "/")[0])
        for extra in [("\(folder)/notes.txt", Array("an added member".utf8))] {
            var added = members
            added.insert(extra, at: members.count - 1)
            #expect(Self.isWorse(try await Self.verify(Self.rebuild(added)), than: original), "\(path): \(extra.0) added")
        }
        // Entries in another order, and the folder renamed: the bytes are no longer canonical.
        var swapped = members
        swapped.swapAt(1, 2)
        #expect(Self.isWorse(try await Self.verify(Self.rebuild(swapped)), than: original), "\(path): entries reordered")
        let renamed = members.map { ("custos-00000000-0000-0000-0000-000000000000/" + $0.0.split(separator: "/", maxSplits: 1)[1], $0.1) }
        #expect(Self.isWorse(try await Self.verify(Self.rebuild(renamed)), than: original), "\(path): folder renamed")
    }

    /// The field case: `criteria.json` of the late vector with its delivery facts moved inside
    /// the clock and its verdict restated as admissible verified as valid, exit 0.
    @Test func aRestatedVerdictIsCaught() async throws {
        let tar = try Self.load("invalid/criteria-live-delivered-late.tar")
        let untouched = try await Self.verify(tar)
        #expect(untouched.outcome == .inadmissible)
        var members = Self.members(tar)
        let i = try #require(members.firstIndex { $0.0.hasSuffix("/criteria.json") })
        var verdict = try JSONDecoder().decode(Verdict.self, from: Data(members[i].1))
        let deliveredAt = try #require(Timestamp.parse(verdict.delivery.deliveredAt))
        verdict.delivery.deadline = Timestamp.format(deliveredAt.addingTimeInterval(86_400))
        // Judged again against the moved facts, it would be admissible: restate it so.
        var judge = PackageJudge(request: try JSONDecoder().decode(ApprovedRequest.self, from: Data(members.first { $0.0.hasSuffix("/request.json") }!.1)),
                                 manifest: try JSONDecoder().decode(Manifest.self, from: Data(members.first { $0.0.hasSuffix("/manifest.json") }!.1)))
        members.first { $0.0.hasSuffix("/content.ndjson") }!.1.withUnsafeBytes { judge.consume(content: $0) }
        let stampedAt = try #require(untouched.timeStampedAt.flatMap(Timestamp.parse))
        let restated = judge.finish(checks: [], delivery: try #require(PackageJudge.Delivery(verdict.delivery, timeStampedAt: stampedAt)),
                                    bounds: PackageJudge.Bounds(verdict.delivery), judgedAt: verdict.judgedAt)
        #expect(restated.admissible)
        var forged = restated
        forged.delivery = verdict.delivery
        members[i].1 = try CanonicalJSON.encode(forged)
        let r = try await Self.verify(Self.rebuild(members))
        #expect(r.outcome == .invalid && r.failures.contains { $0.code == .bundleMember }, "\(r.outcome) \(r.failures)")
    }

    /// A README rewritten to tell the expert to skip the certificate check is caught: its hash
    /// is recorded when the bundle is exported.
    @Test func aRewrittenReadmeIsCaught() async throws {
        let tar = try Self.load("valid/standard.tar")
        var members = Self.members(tar)
        let i = try #require(members.firstIndex { $0.0.hasSuffix("/README.txt") })
        let text = String(decoding: members[i].1, as: UTF8.self)
        #expect(text.contains("openssl cms -verify -binary"))
        members[i].1 = Array(text.replacingOccurrences(of: "openssl cms -verify -binary", with: "openssl cms -verify -noverify -binary").utf8)
        let r = try await Self.verify(Self.rebuild(members))
        #expect(r.outcome == .invalid && r.failures.contains { $0.code == .bundleMember })
    }

    /// A bundle's bytes are canonical: padding, end blocks and headers are as custos writes
    /// them, and nothing follows the end.
    @Test func theBytesAreCanonical() async throws {
        let tar = try Self.load("valid/standard.tar")
        let entries = Self.entries(tar)
        let withPadding = try #require(entries.first { $0.size % 512 != 0 })
        var padded = tar
        padded[withPadding.data + withPadding.size] = 1
        #expect(try await Self.verify(padded).failures.contains { $0.code == .bundleFormat })
        for extra in [[UInt8](repeating: 0, count: 512), [0], Array("x".utf8)] {
            #expect(try await Self.verify(tar + extra).outcome == .invalid, "\(extra.count) bytes after the end")
        }
        // A header field custos writes one way (the modification time) written another.
        var members = Self.members(tar)
        var out: [UInt8] = []
        for (k, m) in members.enumerated() { out += k == 1 ? Tar.header(name: m.0, size: Int64(m.1.count), modifiedAt: 1) + m.1 + Tar.padding(after: Int64(m.1.count)) : Tar.file(m.0, m.1) }
        out += Tar.end
        #expect(try await Self.verify(out).failures.contains { $0.code == .bundleFormat })
        members.removeAll()
    }

    /// Single bytes flipped across the whole bundle, with the outcome expected of each region:
    /// a header (checksum: unusable, or not canonical), a member's data (a binding, a
    /// signature, a proof or a chunk fails), padding and the end (not canonical, or unusable).
    @Test func randomFlipsOverAWholeBundle() async throws {
        let tar = try Self.load("valid/standard.tar")
        let entries = Self.entries(tar)
        var rng = CriteriaTests.SplitMix(seed: 20_261_130)
        var positions = Set((0..<3000).map { _ in Int(rng.next() % UInt64(tar.count)) })
        for e in entries { positions.formUnion([e.header, e.header + 100, e.header + 124, e.header + 148, e.header + 257, e.data]) }
        positions.formUnion([tar.count - 1, tar.count - 1024])
        // Declared informational (SPEC §8): a co-signature's "witness" and "at"; the report's
        // witness and its trust come from the co-signature's certificate.
        let custodyEntry = try #require(entries.first { $0.name.hasSuffix("/custody.json") })
        let informational = Self.informationalRanges(in: Array(tar[custodyEntry.data..<custodyEntry.data + custodyEntry.size]), at: custodyEntry.data)
        let trustedBefore = try await Self.verify(tar).custody?.witnesses.filter(\.trusted).count ?? 0
        #expect(trustedBefore == 1)
        var byRegion: [String: [BundleReport.Outcome: Int]] = [:]
        for p in positions.sorted() {
            var flipped = tar
            flipped[p] ^= UInt8(1 << (rng.next() % 8))
            let r = try await Self.verify(flipped)
            let region: String
            if let e = entries.first(where: { p >= $0.header && p < $0.data }) {
                region = "header of \(e.name.split(separator: "/").last!)"
                #expect(r.outcome == .unusable || r.failures.contains { $0.code == .bundleFormat }, "\(region) at \(p): \(r.outcome)")
            } else if informational.contains(where: { $0.contains(p) }) {
                region = "informational"
                #expect(r.outcome != .valid || (r.custody?.witnesses.filter(\.trusted).count ?? 0) <= trustedBefore, "\(region) at \(p)")
            } else if let e = entries.first(where: { p >= $0.data && p < $0.data + $0.size }) {
                region = "data of \(e.name.split(separator: "/").last!)"
                // Invalid, or — inside a co-signature's certificate — a witness no longer trusted:
                // never as good as before.
                let worse = r.outcome == .invalid || r.outcome == .unusable || (r.custody?.witnesses.filter(\.trusted).count ?? 0) < trustedBefore
                #expect(worse, "\(region) at \(p): \(r.outcome) \(r.failures)")
            } else if entries.contains(where: { p >= $0.data + $0.size && p < $0.end }) {
                region = "padding"
                #expect(r.outcome == .invalid && r.failures.contains { $0.code == .bundleFormat }, "padding at \(p): \(r.outcome)")
            } else {
                region = "end of archive"
                #expect(r.outcome != .valid, "end at \(p): \(r.outcome)")
            }
            byRegion[region, default: [:]][r.outcome, default: 0] += 1
        }
        #expect(positions.count > 2500)
    }

    /// Byte ranges of the values of every "witness" and "at" member in custody.json.
    static func informationalRanges(in json: [UInt8], at offset: Int) -> [Range<Int>] {
        let text = String(decoding: json, as: UTF8.self)
        var out: [Range<Int>] = []
        for key in ["\"witness\":\"", "\"at\":\""] {
            var search = text.startIndex
            while let r = text.range(of: key, range: search..<text.endIndex), let close = text[r.upperBound...].firstIndex(of: "\"") {
                let start = text.utf8.distance(from: text.startIndex, to: r.upperBound)
                let end = text.utf8.distance(from: text.startIndex, to: close)
                out.append((offset + start)..<(offset + end))
                search = close
            }
        }
        return out
    }
}
