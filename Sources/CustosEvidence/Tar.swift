/// The POSIX ustar format (IEEE Std 1003.1), just what bundles need: regular files with
/// names up to 100 bytes, written and read as a stream, so a bundle of any size passes
/// through constant memory. Stock `tar -xf` opens what this writes.
public enum Tar {
    public static let blockSize = 512

    /// The 512-byte header of a regular file.
    public static func header(name: String, size: Int64, mode: Int = 0o644, modifiedAt: Int64 = 0) -> [UInt8] {
        var h = [UInt8](repeating: 0, count: blockSize)
        func put(_ s: String, at offset: Int, width: Int) {
            for (i, b) in s.utf8.prefix(width).enumerated() { h[offset + i] = b }
        }
        func octal(_ v: Int64, at offset: Int, width: Int) {
            let text = String(v, radix: 8)
            put(String(repeating: "0", count: max(0, width - 1 - text.count)) + text, at: offset, width: width - 1)
        }
        precondition(name.utf8.count <= 100, "tar names are at most 100 bytes here")
        put(name, at: 0, width: 100)
        octal(Int64(mode), at: 100, width: 8)
        octal(0, at: 108, width: 8)
        octal(0, at: 116, width: 8)
        octal(size, at: 124, width: 12)
        octal(modifiedAt, at: 136, width: 12)
        h[156] = UInt8(ascii: "0")
        put("ustar", at: 257, width: 6)
        put("00", at: 263, width: 2)
        for i in 148..<156 { h[i] = UInt8(ascii: " ") }
        let sum = h.reduce(0) { $0 + Int64($1) }
        octal(sum, at: 148, width: 7)
        h[155] = UInt8(ascii: " ")
        return h
    }

    /// Zero bytes that pad a file's data to a whole block.
    public static func padding(after size: Int64) -> [UInt8] {
        let r = Int(size % Int64(blockSize))
        return r == 0 ? [] : [UInt8](repeating: 0, count: blockSize - r)
    }

    /// Two zero blocks end an archive.
    public static let end = [UInt8](repeating: 0, count: 2 * blockSize)

    /// A whole small file: header, data, padding.
    public static func file(_ name: String, _ data: [UInt8]) -> [UInt8] {
        header(name: name, size: Int64(data.count)) + data + padding(after: Int64(data.count))
    }

    public struct FormatError: Error, CustomStringConvertible, Sendable {
        public var reason: String
        public var description: String { "not a tar archive: \(reason)" }
    }

    public enum Event: Sendable, Equatable {
        case begin(name: String, size: Int64)
        case data([UInt8])
        case endOfFile
        /// Bytes after the end-of-archive marker (zero bytes included: a bundle ends there).
        case trailingData(Int)
        /// A byte that is not as `Tar` writes it: a header other than `Tar.header(name:size:)`
        /// would write, or padding that is not zero. The bytes of a bundle are canonical, so
        /// one package gives one file and one SHA-256.
        case nonCanonical(String)
    }

    /// Parses an archive fed in slices of any size, calling back for each event.
    public struct Reader: Sendable {
        private enum State { case header, data(remaining: Int64, padding: Int), padding(Int), ended }
        private var state = State.header
        private var headerBuffer: [UInt8] = []
        private var zeroBlocks = 0
        public private(set) var finished = false

        public init() {}

        public mutating func consume(_ bytes: UnsafeRawBufferPointer, _ emit: (Event) throws -> Void) throws {
            var i = 0
            while i < bytes.count {
                switch state {
                case .ended:
                    try emit(.trailingData(bytes.count - i))
                    return
                case .header:
                    let n = min(Tar.blockSize - headerBuffer.count, bytes.count - i)
                    headerBuffer.append(contentsOf: bytes[i..<i + n])
                    i += n
                    guard headerBuffer.count == Tar.blockSize else { continue }
                    let block = headerBuffer
                    headerBuffer.removeAll(keepingCapacity: true)
                    if block.allSatisfy({ $0 == 0 }) {
                        zeroBlocks += 1
                        if zeroBlocks == 2 { state = .ended; finished = true }
                        continue
                    }
                    guard zeroBlocks == 0 else { throw FormatError(reason: "a single zero block inside the archive") }
                    let (name, size) = try Self.parse(block)
                    if name.utf8.count > 100 || block != Tar.header(name: name, size: size) {
                        try emit(.nonCanonical("the header of \(name.utf8.count <= 100 ? name : "an entry") is not as custos writes it"))
                    }
                    try emit(.begin(name: name, size: size))
                    let pad = Tar.padding(after: size).count
                    if size == 0 { try emit(.endOfFile); state = .header } else { state = .data(remaining: size, padding: pad) }
                case .data(let remaining, let pad):
                    let n = Int(min(remaining, Int64(bytes.count - i)))
                    try emit(.data(Array(bytes[i..<i + n])))
                    i += n
                    if remaining - Int64(n) == 0 {
                        try emit(.endOfFile)
                        state = pad == 0 ? .header : .padding(pad)
                    } else {
                        state = .data(remaining: remaining - Int64(n), padding: pad)
                    }
                case .padding(let left):
                    let n = min(left, bytes.count - i)
                    if bytes[i..<i + n].contains(where: { $0 != 0 }) { try emit(.nonCanonical("padding after an entry holds bytes other than zero")) }
                    i += n
                    state = left - n == 0 ? .header : .padding(left - n)
                }
            }
        }

        static func parse(_ h: [UInt8]) throws -> (String, Int64) {
            func field(_ r: Range<Int>) -> String {
                String(decoding: h[r].prefix { $0 != 0 }, as: UTF8.self)
            }
            let stored = Int64(field(148..<156).trimmingCharacters(in: " "), radix: 8)
            var sum: Int64 = 0
            for (i, b) in h.enumerated() { sum += (148..<156).contains(i) ? 32 : Int64(b) }
            guard stored == sum else { throw FormatError(reason: "header checksum mismatch") }
            guard h[156] == UInt8(ascii: "0") || h[156] == 0 else { throw FormatError(reason: "only regular files are expected") }
            guard let size = Int64(field(124..<136).trimmingCharacters(in: " "), radix: 8), size >= 0 else {
                throw FormatError(reason: "bad size field")
            }
            let prefix = field(345..<500)
            let name = field(0..<100)
            return (prefix.isEmpty ? name : prefix + "/" + name, size)
        }
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s.removeFirst() }
        while let l = s.last, set.contains(l) { s.removeLast() }
        return String(s)
    }
}
