import CustosModel
import Foundation
import Logging
import PostgresNIO

extension BrokerStore {
    /// Where `user` is told by e-mail, and of what (every event unless they chose).
    public func notificationSettings(for user: AuthenticatedUser) async throws -> API.NotificationSettings {
        var found: (String?, [String]?)?
        for try await row in try await client.query("SELECT email, email_events FROM users WHERE id = \(user.id)", logger: logger)
            .decode((String?, [String]?).self) { found = row }
        guard let (email, events) = found else { throw BrokerError(.notFound, "only people registered with the broker (users add) are sent e-mail") }
        let all = Notifications.Event.allCases.map(\.rawValue)
        return API.NotificationSettings(email: email, events: events ?? all, available: all)
    }

    /// Sets where `user` is told by e-mail, and of what. The address is checked for shape
    /// (one `@`, no spaces, angle brackets or line breaks, at most 254 characters).
    public func setNotifications(_ change: API.SetNotifications, for user: AuthenticatedUser) async throws -> API.NotificationSettings {
        var current = try await notificationSettings(for: user)
        if let email = change.email {
            if let email {
                let parts = email.split(separator: "@", omittingEmptySubsequences: false)
                guard email.utf8.count <= 254, parts.count == 2, !parts[0].isEmpty, parts[1].contains("."), !parts[1].hasPrefix("."),
                      !email.contains(where: { $0.isWhitespace || $0.isNewline || "<>,;\"\\()[]".contains($0) || $0.asciiValue == nil })
                else {
                    throw BrokerError(.invalid, "invalid notification settings", violations: [FieldViolation(field: "email", rule: "an e-mail address (local@domain)")])
                }
            }
            current.email = email
        }
        if let events = change.events {
            for e in events where Notifications.Event(rawValue: e) == nil {
                throw BrokerError(.invalid, "invalid notification settings", violations: [
                    FieldViolation(field: "events", rule: "each among \(current.available.joined(separator: ", "))"),
                ])
            }
            current.events = current.available.filter(events.contains)
        }
        let chosen: [String]? = current.events.count == current.available.count ? nil : current.events
        try await client.query("UPDATE users SET email = \(current.email), email_events = \(chosen) WHERE id = \(user.id)", logger: logger)
        return current
    }
}
