import Foundation

extension CanonicalJSON {
    /// Encodes `value` with `JSONEncoder`, then canonicalises the result (RFC 8785), so that
    /// signed and hashed bytes never depend on the encoder's key order or escaping.
    public static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = try encoder.encode(value)
        return try canonicalize(data)
    }
}
