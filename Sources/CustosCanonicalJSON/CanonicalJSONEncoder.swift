import Foundation

/// An `Encoder` that builds a `JSONValue` tree directly, for `CanonicalJSON.encode`.
///
/// It writes what `JSONEncoder` with default strategies writes, but for one difference that is
/// part of the Custos contract: a `UUID` is written in lower case (`3f2c…-…`), as RFC 9562 §4
/// and most UUID libraries write it. Foundation's `UUID` encodes itself in upper case, and an
/// id Custos writes must compare equal, byte for byte, with the same id written by anyone else.
/// Upper case is still accepted on input (`UUID(uuidString:)` reads either).
///
/// Other special cases, as `JSONEncoder` does them: `Data` is base64 (RFC 4648 §4), `Date` is
/// its `encode(to:)` (seconds since 2001-01-01 as a number), `URL` its absolute string.
/// Numbers are `Double`s, so integers beyond ±2⁵³ lose precision exactly as RFC 8785 §3.2.2.3
/// says they must.
///
/// Errors: `EncodingError.invalidValue` for a non-finite floating-point number (RFC 8259 has
/// no NaN or infinity), or when a value encodes nothing at all.
struct CanonicalJSONEncoder {
    func encode<T: Encodable>(_ value: T) throws -> JSONValue {
        try Self.box(value, at: [])
    }

    /// A value the encoder writes itself rather than through its `encode(to:)`.
    static func special<T: Encodable>(_ value: T, at path: [any CodingKey]) throws -> JSONValue? {
        switch value {
        case let json as JSONValue: return json
        case let uuid as UUID: return .string(uuid.uuidString.lowercased())
        case let data as Data: return .string(data.base64EncodedString())
        case let url as URL: return .string(url.absoluteString)
        case let decimal as Decimal:
            // From its decimal text, correctly rounded, as JSONEncoder's text would be read.
            return try number(Double(decimal.description) ?? .nan, at: path)
        default: return nil
        }
    }

    static func number(_ d: Double, at path: [any CodingKey]) throws -> JSONValue {
        guard d.isFinite else {
            throw EncodingError.invalidValue(d, .init(codingPath: path, debugDescription: "JSON has no NaN or infinity (RFC 8259 §6)"))
        }
        return .number(d)
    }

    static func box<T: Encodable>(_ value: T, at path: [any CodingKey]) throws -> JSONValue {
        if let special = try special(value, at: path) { return special }
        let encoder = ValueEncoder(codingPath: path)
        try value.encode(to: encoder)
        guard let result = encoder.storage.value else {
            throw EncodingError.invalidValue(value, .init(codingPath: path, debugDescription: "the value encoded nothing"))
        }
        return result
    }
}

/// Where a container writes: a reference, so that nested containers fill their parent in place.
/// Members and items are stored properties mutated in place, so that building an array of a
/// million chunks stays linear.
private final class Slot {
    var scalar: JSONValue?
    var members: [String: Slot]?
    var items: [Slot]?

    var value: JSONValue? {
        if let members {
            var out: [String: JSONValue] = [:]
            out.reserveCapacity(members.count)
            // A member whose value encoded nothing is `{}`, as JSONEncoder writes it.
            for (k, slot) in members { out[k] = slot.value ?? .object([:]) }
            return .object(out)
        }
        if let items { return .array(items.map { $0.value ?? .object([:]) }) }
        return scalar
    }

    func set(_ v: JSONValue) {
        scalar = v
        members = nil
        items = nil
    }

    func makeObject() {
        if members == nil { members = [:]; items = nil; scalar = nil }
    }

    func makeArray() {
        if items == nil { items = []; members = nil; scalar = nil }
    }

    func objectSlot(_ key: String) -> Slot {
        makeObject()
        if let existing = members![key] { return existing }
        let slot = Slot()
        members![key] = slot
        return slot
    }

    func appendSlot() -> Slot {
        makeArray()
        let slot = Slot()
        items!.append(slot)
        return slot
    }

    var arrayCount: Int { items?.count ?? 0 }
}

private struct IndexKey: CodingKey {
    var stringValue: String { "\(intValue!)" }
    var intValue: Int?
    init(_ i: Int) { intValue = i }
    init?(stringValue: String) { nil }
    init?(intValue: Int) { self.intValue = intValue }
}

private final class ValueEncoder: Encoder {
    let codingPath: [any CodingKey]
    let storage: Slot
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    init(codingPath: [any CodingKey], storage: Slot = Slot()) {
        self.codingPath = codingPath
        self.storage = storage
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        storage.makeObject()
        return KeyedEncodingContainer(Keyed<Key>(slot: storage, codingPath: codingPath))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        storage.makeArray()
        return Unkeyed(slot: storage, codingPath: codingPath)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer { Single(slot: storage, codingPath: codingPath) }
}

private func put<T: Encodable>(_ value: T, into slot: Slot, at path: [any CodingKey]) throws {
    if let special = try CanonicalJSONEncoder.special(value, at: path) {
        slot.set(special)
        return
    }
    try value.encode(to: ValueEncoder(codingPath: path, storage: slot))
}

private struct Keyed<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let slot: Slot
    let codingPath: [any CodingKey]

    private func set(_ v: JSONValue, _ key: Key) { slot.objectSlot(key.stringValue).set(v) }

    mutating func encodeNil(forKey key: Key) throws { set(.null, key) }
    mutating func encode(_ value: Bool, forKey key: Key) throws { set(.bool(value), key) }
    mutating func encode(_ value: String, forKey key: Key) throws { set(.string(value), key) }
    mutating func encode(_ value: Double, forKey key: Key) throws { set(try CanonicalJSONEncoder.number(value, at: codingPath + [key]), key) }
    mutating func encode(_ value: Float, forKey key: Key) throws { set(try CanonicalJSONEncoder.number(Double("\(value)") ?? .nan, at: codingPath + [key]), key) }
    mutating func encode(_ value: Int, forKey key: Key) throws { set(.number(Double(value)), key) }
    mutating func encode(_ value: Int8, forKey key: Key) throws { set(.number(Double(value)), key) }
    mutating func encode(_ value: Int16, forKey key: Key) throws { set(.number(Double(value)), key) }
    mutating func encode(_ value: Int32, forKey key: Key) throws { set(.number(Double(value)), key) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { set(.number(Double(value)), key) }
    mutating func encode(_ value: UInt, forKey key: Key) throws { set(.number(Double(value)), key) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { set(.number(Double(value)), key) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { set(.number(Double(value)), key) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { set(.number(Double(value)), key) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { set(.number(Double(value)), key) }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        try put(value, into: slot.objectSlot(key.stringValue), at: codingPath + [key])
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        let child = slot.objectSlot(key.stringValue)
        child.makeObject()
        return KeyedEncodingContainer(Keyed<NestedKey>(slot: child, codingPath: codingPath + [key]))
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        let child = slot.objectSlot(key.stringValue)
        child.makeArray()
        return Unkeyed(slot: child, codingPath: codingPath + [key])
    }

    mutating func superEncoder() -> any Encoder { ValueEncoder(codingPath: codingPath, storage: slot.objectSlot("super")) }
    mutating func superEncoder(forKey key: Key) -> any Encoder { ValueEncoder(codingPath: codingPath + [key], storage: slot.objectSlot(key.stringValue)) }
}

private struct Unkeyed: UnkeyedEncodingContainer {
    let slot: Slot
    let codingPath: [any CodingKey]
    var count: Int { slot.arrayCount }

    private func append(_ v: JSONValue) { slot.appendSlot().set(v) }
    private var nextPath: [any CodingKey] { codingPath + [IndexKey(count)] }

    mutating func encodeNil() throws { append(.null) }
    mutating func encode(_ value: Bool) throws { append(.bool(value)) }
    mutating func encode(_ value: String) throws { append(.string(value)) }
    mutating func encode(_ value: Double) throws { append(try CanonicalJSONEncoder.number(value, at: nextPath)) }
    mutating func encode(_ value: Float) throws { append(try CanonicalJSONEncoder.number(Double("\(value)") ?? .nan, at: nextPath)) }
    mutating func encode(_ value: Int) throws { append(.number(Double(value))) }
    mutating func encode(_ value: Int8) throws { append(.number(Double(value))) }
    mutating func encode(_ value: Int16) throws { append(.number(Double(value))) }
    mutating func encode(_ value: Int32) throws { append(.number(Double(value))) }
    mutating func encode(_ value: Int64) throws { append(.number(Double(value))) }
    mutating func encode(_ value: UInt) throws { append(.number(Double(value))) }
    mutating func encode(_ value: UInt8) throws { append(.number(Double(value))) }
    mutating func encode(_ value: UInt16) throws { append(.number(Double(value))) }
    mutating func encode(_ value: UInt32) throws { append(.number(Double(value))) }
    mutating func encode(_ value: UInt64) throws { append(.number(Double(value))) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        let path = nextPath
        try put(value, into: slot.appendSlot(), at: path)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        let path = nextPath
        let child = slot.appendSlot()
        child.makeObject()
        return KeyedEncodingContainer(Keyed<NestedKey>(slot: child, codingPath: path))
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let path = nextPath
        let child = slot.appendSlot()
        child.makeArray()
        return Unkeyed(slot: child, codingPath: path)
    }

    mutating func superEncoder() -> any Encoder {
        let path = nextPath
        return ValueEncoder(codingPath: path, storage: slot.appendSlot())
    }
}

private struct Single: SingleValueEncodingContainer {
    let slot: Slot
    let codingPath: [any CodingKey]

    private func set(_ v: JSONValue) { slot.set(v) }

    mutating func encodeNil() throws { set(.null) }
    mutating func encode(_ value: Bool) throws { set(.bool(value)) }
    mutating func encode(_ value: String) throws { set(.string(value)) }
    mutating func encode(_ value: Double) throws { set(try CanonicalJSONEncoder.number(value, at: codingPath)) }
    mutating func encode(_ value: Float) throws { set(try CanonicalJSONEncoder.number(Double("\(value)") ?? .nan, at: codingPath)) }
    mutating func encode(_ value: Int) throws { set(.number(Double(value))) }
    mutating func encode(_ value: Int8) throws { set(.number(Double(value))) }
    mutating func encode(_ value: Int16) throws { set(.number(Double(value))) }
    mutating func encode(_ value: Int32) throws { set(.number(Double(value))) }
    mutating func encode(_ value: Int64) throws { set(.number(Double(value))) }
    mutating func encode(_ value: UInt) throws { set(.number(Double(value))) }
    mutating func encode(_ value: UInt8) throws { set(.number(Double(value))) }
    mutating func encode(_ value: UInt16) throws { set(.number(Double(value))) }
    mutating func encode(_ value: UInt32) throws { set(.number(Double(value))) }
    mutating func encode(_ value: UInt64) throws { set(.number(Double(value))) }
    mutating func encode<T: Encodable>(_ value: T) throws { try put(value, into: slot, at: codingPath) }
}
