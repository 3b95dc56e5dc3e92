/// A request or message field that breaks a rule. `field` is a JSON path such as
/// `targets[2].value`; `rule` says what was expected. Neither ever quotes the value, because
/// values can be target identifiers.
public struct FieldViolation: Sendable, Hashable, Codable, CustomStringConvertible {
    public var field: String
    public var rule: String

    public init(field: String, rule: String) {
        self.field = field
        self.rule = rule
    }

    public var description: String { "\(field): \(rule)" }
}

public struct ValidationError: Error, Sendable, CustomStringConvertible {
    public var violations: [FieldViolation]

    public init(_ violations: [FieldViolation]) { self.violations = violations }

    public var description: String {
        "invalid input: " + violations.map(\.description).joined(separator: "; ")
    }
}

/// Collects violations so that a caller hears about every broken rule at once.
struct Validator {
    var violations: [FieldViolation] = []

    mutating func check(_ condition: Bool, _ field: String, _ rule: String) {
        if !condition { violations.append(FieldViolation(field: field, rule: rule)) }
    }

    func finish() throws(ValidationError) {
        if !violations.isEmpty { throw ValidationError(violations) }
    }
}
