import CustosModel
import Foundation

/// Reads a record line's frame — category, target, time — without building a JSON tree, for
/// the common case the judge's fast path takes (RFC 8785 member order, plain ASCII strings,
/// a target of only type and value). Nil for anything else: the caller parses it fully.
public struct RecordFrameReader: Sendable {
    /// Valid only while the line it was read from is.
    public struct Frame {
        public var category: DataCategory
        public var targetType: TargetType
        public var targetValue: UnsafeRawBufferPointer
        /// Seconds since 1970.
        public var seconds: Double
        /// Whether the time is written as Custos writes it: UTC, upper-case `T` and `Z`, at
        /// most nine fraction digits (`RFC3339.Reading.canonical`).
        public var utc: Bool
    }

    let categoryNames = DataCategory.allCases.map { Array($0.rawValue.utf8) }
    let fieldNames = DataCategory.allCases.map { (RecordRules.fields[$0] ?? []).map { Array($0.name.utf8) } }
    let typeNames = TargetType.allCases.map { Array($0.rawValue.utf8) }
    var scan = ScannedRecord()

    public init() {}

    public mutating func read(_ line: UnsafeRawBufferPointer) -> Frame? {
        guard RecordScanner.scan(line, categories: categoryNames, fieldNames: fieldNames, into: &scan),
              case .index(let ci) = scan.category, let type = scan.targetType, let value = scan.targetValue, let time = scan.time,
              let ti = typeNames.firstIndex(where: { RecordScanner.equal(type, $0) }),
              let reading = RFC3339.parse(time.assumingMemoryBound(to: UInt8.self))
        else { return nil }
        return Frame(category: DataCategory.allCases[ci], targetType: TargetType.allCases[ti], targetValue: value, seconds: reading.seconds,
                     utc: reading.canonical)
    }
}
