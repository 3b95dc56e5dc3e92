/// The package manifest, version 1 of the foundation format. It is signed as RFC 8785
/// canonical JSON; `schemas/package/manifest.json` specifies it.
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
    public var results: [Result]
    /// The records, as JSON lines, concatenated over all results.
    public var content: Content
    public var chunks: [Chunk]

    public init(packageId: UUID, requestId: UUID, requestHash: String, providerId: String, asOf: String,
                createdAt: String, results: [Result], content: Content, chunks: [Chunk]) {
        self.format = Self.currentFormat
        self.packageId = packageId
        self.requestId = requestId
        self.requestHash = requestHash
        self.providerId = providerId
        self.asOf = asOf
        self.createdAt = createdAt
        self.results = results
        self.content = content
        self.chunks = chunks
    }

    /// One (target × category) outcome.
    public struct Result: Codable, Sendable, Hashable {
        public enum Status: String, Codable, Sendable { case data, noData = "no-data", cannotExecute = "cannot-execute" }
        public var target: Target
        public var category: DataCategory
        public var status: Status
        public var recordCount: Int
        public var reason: String?

        public init(target: Target, category: DataCategory, status: Status, recordCount: Int, reason: String? = nil) {
            self.target = target
            self.category = category
            self.status = status
            self.recordCount = recordCount
            self.reason = reason
        }
    }

    public struct Content: Codable, Sendable, Hashable {
        public var mediaType: String
        public var size: Int64
        public var sha256: String
        public var recordCount: Int

        public init(mediaType: String = "application/x-ndjson", size: Int64, sha256: String, recordCount: Int) {
            self.mediaType = mediaType
            self.size = size
            self.sha256 = sha256
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

import Foundation
