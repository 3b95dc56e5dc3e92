import Foundation

/// UTC instants on the wire are RFC 3339 strings with a `Z` suffix, e.g. `2026-11-25T02:14:38Z`
/// or with up to nanosecond fractions. They stay strings in the model, so that what is hashed
/// and signed is exactly what was sent.
public enum Timestamp {
    nonisolated(unsafe) private static let whole: ISO8601DateFormatter = {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        f.timeZone = TimeZone(identifier: "UTC")
        return f
    }()

    nonisolated(unsafe) private static let fractional: ISO8601DateFormatter = {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        f.timeZone = TimeZone(identifier: "UTC")
        return f
    }()

    private static let lock = NSLock()

    /// Parses an RFC 3339 UTC time (`Z` only); nil when it is not one.
    public static func parse(_ text: String) -> Date? {
        guard text.hasSuffix("Z"), text.count >= 20 else { return nil }
        return lock.withLock { whole.date(from: text) ?? fractional.date(from: text) }
    }

    /// Formats with millisecond precision, always in UTC.
    public static func format(_ date: Date) -> String {
        lock.withLock { fractional.string(from: date) }
    }

    public static func now() -> String { format(Date()) }
}
