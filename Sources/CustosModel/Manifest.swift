import Foundation

/// The package manifest, format `custos.manifest.v1`; `schemas/package/manifest.json` and
/// `schemas/package/SPEC.md` specify it. The provider signs its RFC 8785 canonical JSON.
///
/// The content is the in-scope records as JSON lines, grouped by result in the order of
/// `results`. It is cut into chunks of at most 512 KiB.
public struct Manifest: Codable, Sendable, Hashable {
    public static var currentFormat: String { "custos.manifest.v1" }

    public var format: String
    public var packageId: UUID
    public var requestId: UUID
    /// Hash of the request as approved (`ApprovedRequest.hash()`).
    public var requestHash: String
    public var providerId: String
    /// When extraction ran: the data reflect the provider's systems at this time.
    public var asOf: String
    public var createdAt: String
    /// One per (target × category) of the request, in content order.
    public var results: [Result]
    public var content: Content
    public var chunks: [Chunk]
    /// RFC 9162 Merkle root over the chunks, each leaf being the chunk's SHA-256.
    public var chunksRoot: String
    /// `true`: a partial delivery, more packages follow for this request. Absent: the final one.
    public var partial: Bool?
    /// Records the provider's systems returned that were not sent because they could not be
    /// read, and that cannot be tied to one result: by category (absent when not even that
    /// could be read) and reason. Absent when there are none. Those tied to one result are in
    /// its `notSent`. Package SPEC §3.
    public var notSent: [NotSent]?

    public init(packageId: UUID, requestId: UUID, requestHash: String, providerId: String, asOf: String,
                createdAt: String, results: [Result], content: Content, chunks: [Chunk], chunksRoot: String, partial: Bool? = nil) {
        self.format = Self.currentFormat
        self.partial = partial
        self.packageId = packageId
        self.requestId = requestId
        self.requestHash = requestHash
        self.providerId = providerId
        self.asOf = asOf
        self.createdAt = createdAt
        self.results = results
        self.content = content
        self.chunks = chunks
        self.chunksRoot = chunksRoot
    }

    /// One (target × category) outcome.
    public struct Result: Codable, Sendable, Hashable {
        public enum Status: String, Codable, Sendable { case data, noData = "no-data", cannotExecute = "cannot-execute" }
        public var target: Target
        public var category: DataCategory
        public var status: Status
        public var recordCount: Int
        /// Bytes of content this result's records take, newlines included.
        public var size: Int64
        /// RFC 9162 Merkle root over this result's records, each leaf being one record's bytes
        /// without its newline; the empty tree's root when there are none.
        public var recordsRoot: String
        public var reason: String?
        /// For `data`: the stretch of the request's window the records cover, how far back the
        /// provider retains this data, and the gaps inside (an outage, a purge). Undeclared
        /// coverage makes the package incomplete (đủ: warn).
        public var coverage: Coverage?
        /// Records of this target and category that were not sent, by reason (`category` is
        /// absent: it is the result's). Absent when there are none.
        public var notSent: [NotSent]?

        public init(target: Target, category: DataCategory, status: Status, recordCount: Int, size: Int64, recordsRoot: String, reason: String? = nil,
                    coverage: Coverage? = nil) {
            self.coverage = coverage
            self.target = target
            self.category = category
            self.status = status
            self.recordCount = recordCount
            self.size = size
            self.recordsRoot = recordsRoot
            self.reason = reason
        }
    }

    public struct Coverage: Codable, Sendable, Hashable {
        public struct Gap: Codable, Sendable, Hashable {
            public var from: String
            public var to: String
            public var reason: String?
            public init(from: String, to: String, reason: String? = nil) {
                self.from = from
                self.to = to
                self.reason = reason
            }
        }
        /// RFC 3339 UTC.
        public var from: String
        public var to: String
        /// The oldest data the provider still holds for this category (its retention horizon).
        public var retainedSince: String?
        public var gaps: [Gap]?
        public init(from: String, to: String, retainedSince: String? = nil, gaps: [Gap]? = nil) {
            self.from = from
            self.to = to
            self.retainedSince = retainedSince
            self.gaps = gaps
        }
    }

    /// A count of records not sent, and why (package SPEC §3). They were returned by the
    /// provider's systems but could not be read, so neither they nor their hashes are in the
    /// package; the count tells a court that a `no-data` or a short result is not the whole
    /// story (đủ warns).
    public struct NotSent: Codable, Sendable, Hashable {
        public enum Reason: String, Codable, Sendable, CaseIterable {
            /// Not a record at all: not a JSON object, a CSV row of the wrong width or with a
            /// broken quote, or no readable category.
            case unreadableRecord = "unreadable-record"
            /// Its category is readable, its target is missing or cannot be read as its type
            /// (a telephone number that is no valid number, an address `inet_pton` refuses).
            case unreadableTarget = "unreadable-target"
            /// Its target and category are the result's; its time is missing or not RFC 3339
            /// with a UTC offset.
            case unreadableTime = "unreadable-time"
        }
        /// Only at the manifest's top level: the category the records were returned for.
        public var category: DataCategory?
        public var reason: Reason
        /// How many records, ≥ 1.
        public var count: Int

        public init(category: DataCategory? = nil, reason: Reason, count: Int) {
            self.category = category
            self.reason = reason
            self.count = count
        }
    }

    public struct Content: Codable, Sendable, Hashable {
        public var mediaType: String
        public var size: Int64
        public var recordCount: Int

        public init(mediaType: String = "application/x-ndjson", size: Int64, recordCount: Int) {
            self.mediaType = mediaType
            self.size = size
            self.recordCount = recordCount
        }
    }

    public struct Chunk: Codable, Sendable, Hashable {
        public var index: Int
        public var size: Int
        public var sha256: String

        public init(index: Int, size: Int, sha256: String) {
            self.index = index
            self.size = size
            self.sha256 = sha256
        }
    }
}
