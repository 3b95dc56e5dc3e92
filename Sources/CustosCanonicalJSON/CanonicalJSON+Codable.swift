import Foundation

extension CanonicalJSON {
    /// Encodes `value` as RFC 8785 canonical JSON, so that signed and hashed bytes never depend
    /// on an encoder's key order or escaping. `UUID`s are written in lower case (RFC 9562 §4);
    /// otherwise the values are those `JSONEncoder` writes with its default strategies.
    ///
    /// Errors: `EncodingError.invalidValue` for a NaN or infinite number.
    public static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        serialize(try CanonicalJSONEncoder().encode(value))
    }

    /// `value` as a JSON tree, encoded as `encode(_:)` encodes it.
    public static func tree<T: Encodable>(_ value: T) throws -> JSONValue {
        try CanonicalJSONEncoder().encode(value)
    }
}
