import Foundation

extension API {
    /// `GET /v1/me/notifications`: where the caller is told by e-mail and of what.
    public struct NotificationSettings: Codable, Sendable, Hashable {
        /// Nil: no e-mail.
        public var email: String?
        /// The events chosen (`request.submitted`, `emergency.submitted`, `review.due`,
        /// `question.asked`, `package.delivered`, `clock.late`, `clock.escalated`,
        /// `clock.expired`): each reaches the caller when their role or cases concern it.
        public var events: [String]
        /// Every event there is.
        public var available: [String]

        public init(email: String?, events: [String], available: [String]) {
            self.email = email
            self.events = events
            self.available = available
        }
    }

    /// `PUT /v1/me/notifications`: absent members stay as they are; `email` null stops e-mail.
    public struct SetNotifications: Codable, Sendable {
        public var email: String??
        public var events: [String]?

        public init(email: String?? = nil, events: [String]? = nil) {
            self.email = email
            self.events = events
        }

        enum CodingKeys: String, CodingKey { case email, events }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            email = c.contains(.email) ? .some(try c.decode(String?.self, forKey: .email)) : nil
            events = try c.decodeIfPresent([String].self, forKey: .events)
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            if let email { try c.encode(email, forKey: .email) }
            try c.encodeIfPresent(events, forKey: .events)
        }
    }
}
