import struct Crypto.SymmetricKey
import enum Crypto.AES
import CustosEvidence
import CustosModel
import CustosRuntime
import Foundation

/// Where package chunks live, outside PostgreSQL (which keeps only the index: package, index,
/// SHA-256, size and location). The broker writes a chunk with `put` before it stores the
/// chunk's Kafka offset, and reads it back with `get`, which never returns bytes that are not
/// the chunk asked for.
///
/// The embedded implementation is `DirectoryChunkStore`. Another backend — an S3-compatible
/// object store, say — implements this protocol: `put` must return only once the chunk is
/// durable, with a location string of its own scheme (the index keeps it as given); `get`
/// must throw `ChunkStoreError` for a chunk that is absent or whose bytes do not authenticate.
/// Chunks are content-addressed, so two brokers writing the same chunk at once is harmless.
public protocol ChunkStore: Sendable {
    /// Where the chunk whose SHA-256 is `sha256` is (or would be) kept: chunks are
    /// content-addressed, so the index row can be written before the bytes.
    func location(sha256: String) -> String
    /// Stores `bytes`, whose SHA-256 is `sha256` (64 lower-case hex digits), durably, and
    /// returns where (`location(sha256:)`). Storing the same bytes again stores nothing new.
    func put(_ bytes: UnsafeRawBufferPointer, sha256: String) throws -> String
    /// The chunk at `location`: its bytes, checked to have SHA-256 `sha256`.
    /// Throws `ChunkStoreError` when it is missing, cannot be decrypted, or differs.
    func get(location: String, sha256: String) throws -> [UInt8]
}

/// A chunk that cannot be read back, by location: never served, reported as a failed read.
public struct ChunkStoreError: Error, CustomStringConvertible, Sendable {
    public enum Kind: String, Sendable { case missing, corrupted, unwritable }
    public var kind: Kind
    public var location: String
    public var detail: String
    public var description: String { "chunk store: \(location) is \(kind.rawValue): \(detail)" }
}

/// The embedded chunk store: a content-addressed directory on the broker's disk (or a shared
/// filesystem several brokers mount). A chunk with SHA-256 `h` lives at `<root>/h[0..<2]/h`,
/// encrypted at rest with AES-256-GCM (NIST SP 800-38D) under the key of `storage.keyFile`:
/// the file is the 8 bytes `CUSTOSC1`, a random 12-byte nonce, the ciphertext and the 16-byte
/// tag, with `h` (as ASCII hex) as additional authenticated data, so a file moved to another
/// name does not decrypt. A file is written to a temporary name, fsynced, renamed into place
/// and its directory fsynced before `put` returns. Location strings are `file:<h[0..<2]>/<h>`.
public struct DirectoryChunkStore: ChunkStore {
    public let root: URL
    let key: SymmetricKey
    static let magic = Array("CUSTOSC1".utf8)

    /// `key`: 32 bytes (AES-256).
    public init(root: URL, key: SymmetricKey) throws {
        precondition(key.bitCount == 256)
        self.root = root
        self.key = key
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
    }

    /// Reads a key file: 64 hexadecimal digits (a trailing newline is allowed), as
    /// `custos-broker keys storage-key` writes it. Throws a readable reason otherwise.
    public static func loadKey(path: String) throws -> SymmetricKey {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ConfigurationError(key: "storage.keyFile", reason: "cannot read \(path)")
        }
        let hex = text.trimmingCharacters(in: .whitespacesAndNewlines).lowercased()
        guard hex.count == 64, let bytes = Digest.bytes(hex: hex), bytes.count == 32 else {
            throw ConfigurationError(key: "storage.keyFile", reason: "\(path) must hold 64 hexadecimal digits (a 256-bit AES key)")
        }
        return SymmetricKey(data: bytes)
    }

    /// A new random key as the key file holds it.
    public static func newKeyText() -> String {
        SymmetricKey(size: .bits256).withUnsafeBytes { $0.map { String(format: "%02x", $0) }.joined() } + "\n"
    }

    func path(_ sha256: String) -> URL {
        root.appendingPathComponent(String(sha256.prefix(2))).appendingPathComponent(sha256)
    }

    public func location(sha256: String) -> String { "file:\(sha256.prefix(2))/\(sha256)" }

    /// Removes the temporary files (`.<sha256>.<uuid>.tmp`) of writes that never finished —
    /// a broker killed in the middle of one — once older than `age` seconds, so that a write
    /// another instance has in progress is left alone. Never touches a stored chunk. Returns how
    /// many it removed. `custos-broker serve` runs it in the background at start (1 hour).
    @discardableResult
    public func sweepTemporaryFiles(olderThan age: TimeInterval) -> Int {
        let cutoff = Date().addingTimeInterval(-age)
        var removed = 0
        guard let shards = try? FileManager.default.contentsOfDirectory(atPath: root.path) else { return 0 }
        for shard in shards where shard.count == 2 {
            let directory = root.appendingPathComponent(shard)
            for name in (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? [] where name.hasPrefix(".") && name.hasSuffix(".tmp") {
                let file = directory.appendingPathComponent(name)
                guard let modified = (try? FileManager.default.attributesOfItem(atPath: file.path))?[.modificationDate] as? Date, modified < cutoff else { continue }
                if unlink(file.path) == 0 { removed += 1 }
            }
        }
        return removed
    }

    public func put(_ bytes: UnsafeRawBufferPointer, sha256: String) throws -> String {
        precondition(Digest.isSHA256Hex(sha256))
        let location = location(sha256: sha256)
        let url = path(sha256)
        // Content-addressed: a chunk already stored intact is not stored twice.
        if FileManager.default.fileExists(atPath: url.path), (try? get(location: location, sha256: sha256)) != nil { return location }
        let sealed: AES.GCM.SealedBox
        do {
            sealed = try AES.GCM.seal(bytes, using: key, nonce: AES.GCM.Nonce(), authenticating: Array(sha256.utf8))
        } catch {
            throw ChunkStoreError(kind: .unwritable, location: location, detail: "encryption failed: \(error)")
        }
        let directory = url.deletingLastPathComponent()
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let temporary = directory.appendingPathComponent(".\(sha256).\(UUID().uuidString.lowercased()).tmp")
            var file = Self.magic
            file.append(contentsOf: sealed.combined!)
            try Self.writeDurably(file, to: temporary)
            guard rename(temporary.path, url.path) == 0 else {
                let why = String(cString: strerror(errno))
                unlink(temporary.path)
                throw ChunkStoreError(kind: .unwritable, location: location, detail: "rename failed: \(why)")
            }
            try Self.syncDirectory(directory)
        } catch let e as ChunkStoreError {
            throw e
        } catch {
            throw ChunkStoreError(kind: .unwritable, location: location, detail: "\(error)")
        }
        return location
    }

    public func get(location: String, sha256: String) throws -> [UInt8] {
        guard Digest.isSHA256Hex(sha256), location == self.location(sha256: sha256) else {
            throw ChunkStoreError(kind: .missing, location: location, detail: "not a location of this store")
        }
        guard let data = FileManager.default.contents(atPath: path(sha256).path) else {
            throw ChunkStoreError(kind: .missing, location: location, detail: "no such file")
        }
        let bytes = [UInt8](data)
        guard bytes.count >= 8 + 12 + 16, Array(bytes.prefix(8)) == Self.magic,
              let box = try? AES.GCM.SealedBox(combined: bytes[8...]),
              let plain = try? AES.GCM.open(box, using: key, authenticating: Array(sha256.utf8))
        else {
            throw ChunkStoreError(kind: .corrupted, location: location, detail: "it does not decrypt under the storage key")
        }
        let chunk = [UInt8](plain)
        guard Digest.sha256Hex(chunk) == sha256 else {
            throw ChunkStoreError(kind: .corrupted, location: location, detail: "its SHA-256 differs from the index")
        }
        return chunk
    }

    static func writeDurably(_ bytes: [UInt8], to url: URL) throws {
        let fd = open(url.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw ChunkStoreError(kind: .unwritable, location: url.path, detail: String(cString: strerror(errno))) }
        defer { close(fd) }
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + written, $0.count - written) }
            if n < 0 {
                if errno == EINTR { continue }
                throw ChunkStoreError(kind: .unwritable, location: url.path, detail: String(cString: strerror(errno)))
            }
            written += n
        }
        guard fsync(fd) == 0 else { throw ChunkStoreError(kind: .unwritable, location: url.path, detail: "fsync: \(String(cString: strerror(errno)))") }
    }

    static func syncDirectory(_ url: URL) throws {
        let fd = open(url.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        _ = fsync(fd)
    }
}
