import CustosModel

/// An error the broker reports to a caller. `description` is safe to log: it never quotes
/// targets or payload.
public struct BrokerError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case unauthorized, forbidden, notFound = "not-found", conflict, invalid, tooLarge = "too-large", unavailable
        /// Stored evidence cannot be read back (a chunk missing or corrupted in the chunk
        /// store): never served; 500, with the chunk named.
        case storageFailure = "storage-failure"
    }
    public var code: Code
    public var reason: String
    public var violations: [FieldViolation]
    public var file: String
    public var line: Int

    public init(_ code: Code, _ reason: String, violations: [FieldViolation] = [], file: String = #fileID, line: Int = #line) {
        self.code = code
        self.reason = reason
        self.violations = violations
        self.file = file
        self.line = line
    }

    public var description: String { "\(code.rawValue): \(reason)" }
}
