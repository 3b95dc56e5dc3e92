import CustosCanonicalJSON
import CustosCriteria
import CustosModel
import Foundation

/// Reads what an `exec` adapter writes, or a `file-drop` export holds, in slices of any size:
///
/// - **JSON lines**: one record per line, `{"category", "target": {"type", "value"}, "time",
///   "record": {…}}`; or a coverage declaration, `{"coverage": {"from", "to", "retainedSince"?,
///   "gaps"?}, "target"?: …}` (for one target, or without `target` for all of them).
/// - **CSV** (RFC 4180, comma-separated, a header line first; no line breaks inside cells):
///   columns `category`, `target_type`, `target_value`, `time`, optionally `target_port`, and
///   one per record field, named as in `schemas/records/`. Empty cells are left out; cells of
///   numeric fields become numbers.
///
/// The format is told by the first line that is not blank: `{` starts JSON lines. A UTF-8
/// byte-order mark before it (Excel's "CSV UTF-8" writes one) is skipped. Every record then
/// goes through the `RecordGate` (canonical form, scope). A record that cannot be read (not
/// JSON, a CSV row of the wrong width or with a broken quote, no readable target or time) is
/// not sent: it is counted as `unreadable`, its line number kept for the operator (never its
/// content), and the rest is delivered. Only what makes the whole output unreadable (a CSV
/// header without its columns, output not ending in a newline) is an error.
struct AdapterOutput {
    var gate: RecordGate
    let category: DataCategory
    let sink: ExecAdapter.Sink
    let coverage: ExecAdapter.CoverageSink
    private(set) var dropped: [RecordGate.Drop: Int] = [:]
    /// The first unreadable records' line numbers (1-based, header included).
    private(set) var unreadableLines: [Int] = []
    /// How many unreadable line numbers are kept for the log.
    static let unreadableLinesKept = 100
    /// The unreadable records by where they belong and why (the manifest's `notSent`).
    private(set) var notSent: [ExecAdapter.NotSentKey: Int] = [:]
    /// The category a line that is no record at all is counted under: the adapter's, when it
    /// returns that category only (exec); nil for a file drop, which holds every category.
    let unreadableCategory: DataCategory?
    private var pending: [UInt8] = []
    private var lineNumber = 0
    private enum Format { case unknown, json, csv([String]) }
    private var format = Format.unknown
    private let numeric: Set<String>

    init(gate: RecordGate, category: DataCategory, holdsOtherCategories: Bool = false, sink: @escaping ExecAdapter.Sink,
         coverage: @escaping ExecAdapter.CoverageSink) {
        self.gate = gate
        self.category = category
        unreadableCategory = holdsOtherCategories ? nil : category
        self.sink = sink
        self.coverage = coverage
        numeric = RecordRules.numericFields(category)
    }

    typealias Failure = ExecAdapter.Failure

    mutating func consume(_ data: some Collection<UInt8>) throws {
        pending.append(contentsOf: data)
        var start = 0
        defer { pending.removeFirst(start) }
        while start < pending.count {
            let nl = pending.withUnsafeBytes { b in memchr(b.baseAddress! + start, 0x0A, b.count - start).map { b.baseAddress!.distance(to: UnsafeRawPointer($0)) } }
            guard let nl else { break }
            let line = pending[start..<nl]
            start = nl + 1
            try self.line(line)
        }
    }

    mutating func finish() throws {
        guard pending.allSatisfy({ $0 == 0x20 || $0 == 0x0D }) else { throw Failure(reason: "output does not end with a newline") }
        pending = []
    }

    private mutating func line(_ raw: ArraySlice<UInt8>) throws {
        lineNumber += 1
        var line = raw
        if line.last == 0x0D { line = line.dropLast() }
        if lineNumber == 1, line.starts(with: [0xEF, 0xBB, 0xBF]) { line = line.dropFirst(3) }  // UTF-8 byte-order mark
        if line.first != UInt8(ascii: "{"), line.allSatisfy({ $0 == 0x20 }) { return }
        switch format {
        case .unknown:
            if line.first(where: { $0 != 0x20 }) == UInt8(ascii: "{") {
                format = .json
                try json(line)
            } else {
                let header = try Self.cells(line, lineNumber)
                for required in ["category", "target_type", "target_value", "time"] where !header.contains(required) {
                    throw Failure(reason: "CSV header (line \(lineNumber)) has no \(required) column")
                }
                format = .csv(header)
            }
        case .json: try json(line)
        case .csv(let header): try csv(line, header)
        }
    }

    private mutating func json(_ line: ArraySlice<UInt8>) throws {
        let fast: Bool = try line.withUnsafeBytes { bytes in
            switch gate.admitFast(bytes) {
            case .keep(let target)?: try sink(target, bytes)
            case .drop(let why)?: dropped[why, default: 0] += 1
            case nil: return false
            }
            return true
        }
        if fast { return }
        guard case .object(let object)? = try? JSONParser.parse(line) else { return unreadable(.unreadableRecord, nil, unreadableCategory) }
        if let c = object["coverage"] {
            guard let covered = ExecAdapter.coverage(c), object.keys.allSatisfy({ $0 == "coverage" || $0 == "target" }) else {
                throw Failure(reason: "output line \(lineNumber) is not a coverage declaration (from, to in RFC 3339 UTC)")
            }
            var target: Target?
            if case .object(let t)? = object["target"] {
                guard let type = t["type"]?.stringValue.flatMap(TargetType.init(rawValue:)), let value = t["value"]?.stringValue else {
                    throw Failure(reason: "output line \(lineNumber) names a coverage target without type and value")
                }
                guard let (canonicalType, canonical) = RecordGate.canonical(type, value, countryCode: gate.settings.defaultCountryCode) else {
                    throw Failure(reason: "output line \(lineNumber) names a coverage target whose value cannot be read as its type")
                }
                var port: Int?
                if case .number(let n)? = t["port"], n == n.rounded(), (1...65535).contains(n) { port = Int(n) }
                target = Target(type: canonicalType, value: canonical, port: port, at: t["at"]?.stringValue, platform: t["platform"]?.stringValue)
            }
            coverage(target, covered)
            return
        }
        try admit(gate.admit(object, original: Array(line)))
    }

    private mutating func csv(_ line: ArraySlice<UInt8>, _ header: [String]) throws {
        guard let cells = try? Self.cells(line, lineNumber), cells.count == header.count else {
            return unreadable(.unreadableRecord, nil, unreadableCategory)
        }
        var target: [String: JSONValue] = [:]
        var frame: [String: JSONValue] = [:]
        var record: [String: JSONValue] = [:]
        for (name, cell) in zip(header, cells) where !cell.isEmpty {
            switch name {
            case "category", "time": frame[name] = .string(cell)
            case "target_type": target["type"] = .string(cell)
            case "target_value": target["value"] = .string(cell)
            case "target_port": target["port"] = Double(cell).map(JSONValue.number) ?? .string(cell)
            default:
                if numeric.contains(name), let n = Double(cell), n.isFinite { record[name] = .number(n) } else { record[name] = .string(cell) }
            }
        }
        frame["target"] = .object(target)
        frame["record"] = .object(record)
        try admit(gate.admit(frame))
    }

    private mutating func admit(_ outcome: RecordGate.Outcome) throws {
        switch outcome {
        case .record(let target, let bytes): try bytes.withUnsafeBytes { try sink(target, $0) }
        case .dropped(let why): dropped[why, default: 0] += 1
        case .unreadable(let reason, let target, let category): unreadable(reason, target, category ?? unreadableCategory)
        }
    }

    /// A record that cannot be read: counted by where it belongs and why, its line number
    /// kept, the rest goes on.
    private mutating func unreadable(_ reason: Manifest.NotSent.Reason, _ target: Target?, _ category: DataCategory?) {
        dropped[.unreadable, default: 0] += 1
        notSent[ExecAdapter.NotSentKey(reason: reason, category: category, target: target), default: 0] += 1
        if unreadableLines.count < Self.unreadableLinesKept { unreadableLines.append(lineNumber) }
    }

    /// The cells of one CSV line (RFC 4180 quoting, `""` inside quotes).
    static func cells(_ line: ArraySlice<UInt8>, _ number: Int) throws -> [String] {
        var cells: [String] = []
        var cell: [UInt8] = []
        var quoted = false, wasQuoted = false
        var i = line.startIndex
        while i < line.endIndex {
            let c = line[i]
            if quoted {
                if c == 0x22 {
                    if line.index(after: i) < line.endIndex && line[line.index(after: i)] == 0x22 { cell.append(0x22); i = line.index(after: i) } else { quoted = false }
                } else {
                    cell.append(c)
                }
            } else if c == 0x22 && cell.isEmpty && !wasQuoted {
                quoted = true
                wasQuoted = true
            } else if c == 0x2C {
                cells.append(String(decoding: cell, as: UTF8.self))
                cell = []
                wasQuoted = false
            } else {
                if wasQuoted { throw Failure(reason: "CSV line \(number): characters after a closing quote") }
                cell.append(c)
            }
            i = line.index(after: i)
        }
        if quoted { throw Failure(reason: "CSV line \(number): a quote is not closed") }
        cells.append(String(decoding: cell, as: UTF8.self))
        return cells.map { $0.trimmingCharacters(in: .whitespaces) }
    }
}
