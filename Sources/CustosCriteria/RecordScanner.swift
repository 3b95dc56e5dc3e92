import Foundation

/// A value of a record field as the rules see it: string bytes (UTF-8, unescaped), a number,
/// or anything else (true, false, null, an object, an array), which no field accepts.
enum FieldValue {
    case string(UnsafeRawBufferPointer)
    case number(Double)
    case other
}

/// What the judge needs of one record line, read without building a JSON tree.
/// `@unchecked Sendable`: it is the judge's scratch space; its pointers into a line are read
/// only while that line's `consume` runs, and never outlive it.
struct ScannedRecord: @unchecked Sendable {
    var category: DataCategoryIndex = .invalid
    var targetType: UnsafeRawBufferPointer?
    var targetValue: UnsafeRawBufferPointer?
    var time: UnsafeRawBufferPointer?
    /// Per field of the category's rules, in their order.
    var fields: [FieldValue?] = Array(repeating: nil, count: 8)

    enum DataCategoryIndex: Equatable { case invalid, index(Int) }
}

/// The judge's fast path over the common case: a record in canonical member order (RFC 8785:
/// category, record, target, time) whose strings are ASCII without escapes and whose target
/// has only `type` and `value`. Anything else — and anything malformed — is handed back
/// (`false`) to the full parser, which decides; so the fast path only has to be right about
/// what it accepts, and a test checks it against the full parser on mutated records.
enum RecordScanner {
    static let keys: [[UInt8]] = ["category", "record", "target", "time"].map { Array($0.utf8) }
    static let typeKey = Array("type".utf8), valueKey = Array("value".utf8)

    @inline(__always) static func equal(_ s: UnsafeRawBufferPointer, _ k: [UInt8]) -> Bool {
        s.count == k.count && k.withUnsafeBytes { memcmp($0.baseAddress!, s.baseAddress!, s.count) == 0 }
    }

    /// A reading position in one line (a struct, so the hot loop needs no boxed captures).
    struct Cursor {
        let b: UnsafeRawBufferPointer
        let n: Int
        var i = 0

        init(_ b: UnsafeRawBufferPointer) {
            self.b = b
            n = b.count
        }

        var atEnd: Bool { i >= n }
        func peek(_ c: UInt8) -> Bool { i < n && b[i] == c }

        @inline(__always) mutating func ws() { while i < n, b[i] == 0x20 || b[i] == 0x09 || b[i] == 0x0D || b[i] == 0x0A { i += 1 } }

        /// A string with no escapes, control characters or non-ASCII bytes; nil for any other.
        @inline(__always) mutating func string() -> UnsafeRawBufferPointer? {
            guard i < n, b[i] == 0x22 else { return nil }
            let start = i + 1
            var j = start
            while j < n {
                let c = b[j]
                if c == 0x22 { break }
                if c == 0x5C || c < 0x20 || c >= 0x80 { return nil }
                j += 1
            }
            guard j < n else { return nil }
            i = j + 1
            return UnsafeRawBufferPointer(rebasing: b[start..<j])
        }

        /// A number in JSON's grammar (RFC 8259 §6).
        mutating func number() -> Double? {
            let start = i
            if i < n, b[i] == 0x2D { i += 1 }
            guard i < n, (0x30...0x39).contains(b[i]) else { return nil }
            if b[i] == 0x30 { i += 1 } else { while i < n, (0x30...0x39).contains(b[i]) { i += 1 } }
            var integral = true
            if i < n, b[i] == 0x2E {
                integral = false
                i += 1
                let f = i
                while i < n, (0x30...0x39).contains(b[i]) { i += 1 }
                guard i > f else { return nil }
            }
            if i < n, b[i] == 0x65 || b[i] == 0x45 {
                integral = false
                i += 1
                if i < n, b[i] == 0x2B || b[i] == 0x2D { i += 1 }
                let e = i
                while i < n, (0x30...0x39).contains(b[i]) { i += 1 }
                guard i > e else { return nil }
            }
            guard i < n else { return nil }  // a number never ends a record line
            if integral, i - start <= 16 {
                var v = 0
                var k = start
                let negative = b[k] == 0x2D
                if negative { k += 1 }
                while k < i { v = v * 10 + Int(b[k] - 0x30); k += 1 }
                return Double(negative ? -v : v)
            }
            // strtod stops at the delimiter after the number, which the grammar check found.
            let value = strtod(b.baseAddress!.assumingMemoryBound(to: CChar.self) + start, nil)
            return value.isFinite ? value : nil
        }

        /// Skips any value (for fields whose value no rule accepts, and the provider's own fields).
        mutating func skip(depth: Int = 0) -> Bool {
            guard i < n, depth < 32 else { return false }
            switch b[i] {
            case 0x22:
                i += 1
                while i < n, b[i] != 0x22 {
                    // Escapes, control characters and non-ASCII: the full parser's to judge.
                    if b[i] < 0x20 || b[i] >= 0x80 || b[i] == 0x5C { return false }
                    i += 1
                }
                guard i < n else { return false }
                i += 1
                return true
            case 0x7B, 0x5B:
                let close: UInt8 = b[i] == 0x7B ? 0x7D : 0x5D
                let object = b[i] == 0x7B
                i += 1
                ws()
                if i < n, b[i] == close { i += 1; return true }
                while true {
                    if object {
                        guard string() != nil, colon() else { return false }
                    }
                    guard skip(depth: depth + 1) else { return false }
                    ws()
                    guard i < n else { return false }
                    if b[i] == close { i += 1; return true }
                    guard b[i] == 0x2C else { return false }
                    i += 1
                    ws()
                }
            case 0x74: return literal("true")
            case 0x66: return literal("false")
            case 0x6E: return literal("null")
            default: return number() != nil
            }
        }

        mutating func literal(_ word: StaticString) -> Bool {
            let count = word.utf8CodeUnitCount
            guard i + count <= n, memcmp(b.baseAddress! + i, word.utf8Start, count) == 0 else { return false }
            i += count
            return true
        }

        @inline(__always) mutating func colon() -> Bool {
            ws()
            guard i < n, b[i] == 0x3A else { return false }
            i += 1
            ws()
            return true
        }

        /// After a member: `,` (true, more follow) or the closing brace (false, done); nil if neither.
        @inline(__always) mutating func next() -> Bool? {
            ws()
            guard i < n else { return nil }
            if b[i] == 0x2C { i += 1; ws(); return true }
            if b[i] == 0x7D { i += 1; return false }
            return nil
        }
    }

    static func scan(_ b: UnsafeRawBufferPointer, categories: [[UInt8]], fieldNames: [[[UInt8]]], into r: inout ScannedRecord) -> Bool {
        var c = Cursor(b)
        c.ws()
        guard c.peek(0x7B) else { return false }
        c.i += 1
        c.ws()
        for (k, key) in keys.enumerated() {
            guard let name = c.string(), equal(name, key), c.colon() else { return false }
            switch k {
            case 0:
                guard let value = c.string(), let index = categories.firstIndex(where: { equal(value, $0) }) else { return false }
                r.category = .index(index)
            case 1:
                guard case .index(let ci) = r.category, c.peek(0x7B) else { return false }
                let names = fieldNames[ci]
                for f in 0..<names.count { r.fields[f] = nil }
                c.i += 1
                c.ws()
                if c.peek(0x7D) { c.i += 1 } else {
                    var unknown: [UnsafeRawBufferPointer] = []
                    while true {
                        guard let fieldName = c.string(), c.colon(), !c.atEnd else { return false }
                        if let f = names.firstIndex(where: { equal(fieldName, $0) }) {
                            guard r.fields[f] == nil else { return false }  // a repeated member: the full parser refuses it
                            let first = b[c.i]
                            if first == 0x22 {
                                guard let s = c.string() else { return false }
                                r.fields[f] = .string(s)
                            } else if first == 0x2D || (0x30...0x39).contains(first) {
                                guard let v = c.number() else { return false }
                                r.fields[f] = .number(v)
                            } else {
                                guard c.skip() else { return false }
                                r.fields[f] = .other
                            }
                        } else {
                            // A field of the provider's own: kept out of the rules, but never twice.
                            guard !unknown.contains(where: { $0.count == fieldName.count && memcmp($0.baseAddress!, fieldName.baseAddress!, $0.count) == 0 }),
                                  c.skip() else { return false }
                            unknown.append(fieldName)
                        }
                        guard let more = c.next() else { return false }
                        if !more { break }
                    }
                }
            case 2:
                guard c.peek(0x7B) else { return false }
                c.i += 1
                c.ws()
                guard let t = c.string(), equal(t, typeKey), c.colon(), let type = c.string(), c.next() == true,
                      let v = c.string(), equal(v, valueKey), c.colon(), let value = c.string(), c.next() == false
                else { return false }
                r.targetType = type
                r.targetValue = value
            default:
                guard let t = c.string() else { return false }
                r.time = t
            }
            guard let more = c.next(), more == (k < keys.count - 1) else { return false }
        }
        c.ws()
        return c.atEnd
    }
}
