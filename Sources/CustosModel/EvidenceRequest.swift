import CustosCanonicalJSON
import Crypto
import Foundation

/// Retained-data categories (after ETSI TS 102 657's service-specific details).
public enum DataCategory: String, Codable, Sendable, CaseIterable, Hashable {
    case subscriber
    case traffic
    case location
    case ipSession = "ip-session"
    case financial
    case kycDocument = "kyc-document"
}

public enum TargetType: String, Codable, Sendable, CaseIterable, Hashable {
    case msisdn, imsi, imei, ipv4, ipv6, email, account
    case bankAccount = "bank-account"
    case nationalId = "national-id"
}

public struct Target: Codable, Sendable, Hashable {
    public var type: TargetType
    public var value: String
    /// For `ipv4`/`ipv6`: the source port. Behind carrier-grade NAT a public address names a
    /// subscriber only together with its port and a time.
    public var port: Int?
    /// For `ipv4`/`ipv6`: the moment the address (and port) was seen, RFC 3339 UTC.
    public var at: String?
    /// For `account`: the platform the account id belongs to (e.g. a social network's id).
    public var platform: String?

    public init(type: TargetType, value: String, port: Int? = nil, at: String? = nil, platform: String? = nil) {
        self.type = type
        self.value = value
        self.port = port
        self.at = at
        self.platform = platform
    }

    /// The target with its value as it is compared, hashed and stored: Unicode NFC (UAX #15)
    /// for text identifiers, and an e-mail address's domain in lower case. What is refused
    /// stays refused (`TargetFormat.isValid`); nothing else is rewritten.
    public var normalized: Target {
        var t = self
        t.value = TargetFormat.normalizedText(type, value)
        return t
    }

    /// Checks the fields beside `value`; each violation names `field` (e.g. `targets[2]`).
    func validateQualifiers(_ v: inout Validator, _ field: String) {
        let isIP = type == .ipv4 || type == .ipv6
        if let port {
            v.check(isIP, "\(field).port", "is only for ipv4 and ipv6 targets")
            v.check((1...65535).contains(port), "\(field).port", "must be 1 to 65535")
            v.check(at != nil, "\(field).at", "is required with a port: behind CGNAT an address and port name a subscriber only at a given time")
        }
        if let at {
            v.check(isIP, "\(field).at", "is only for ipv4 and ipv6 targets")
            v.check(Timestamp.parse(at) != nil, "\(field).at", "must be an RFC 3339 UTC time ending in Z")
        }
        if type == .account {
            v.check(platform.map { (1...64).contains($0.count) && ProviderID.isValid($0) } ?? false, "\(field).platform",
                    "is required for an account: the platform's id, matching \(ProviderID.pattern)")
        } else {
            v.check(platform == nil, "\(field).platform", "is only for account targets")
        }
    }
}

public struct LegalBasis: Codable, Sendable, Hashable {
    /// Number of the decision that authorises the request.
    public var decisionNumber: String
    public var issuingAuthority: String
    /// Calendar date of the decision, `YYYY-MM-DD`.
    public var issuedOn: String
    /// The decision itself, uploaded to the broker (`POST /v1/documents`) and named here by its
    /// hash, so the request as approved — and the provider's signed manifest with it — binds
    /// the exact document. Required to submit.
    public var document: LegalDocument?

    public init(decisionNumber: String, issuingAuthority: String, issuedOn: String, document: LegalDocument? = nil) {
        self.decisionNumber = decisionNumber
        self.issuingAuthority = issuingAuthority
        self.issuedOn = issuedOn
        self.document = document
    }
}

/// A document held by the broker, named by its content's SHA-256.
public struct LegalDocument: Codable, Sendable, Hashable {
    /// SHA-256 of the document's bytes, lower-case hex.
    public var sha256: String
    public var mediaType: String
    public var size: Int

    public init(sha256: String, mediaType: String, size: Int) {
        self.sha256 = sha256
        self.mediaType = mediaType
        self.size = size
    }

    /// What a decision may be: a PDF, or a scan of the signed paper.
    public static let mediaTypes: Set<String> = ["application/pdf", "image/png", "image/jpeg", "image/tiff"]
    public static let maximumSize = 20 * 1024 * 1024

    /// The media type for a file name's extension, or nil.
    public static func mediaType(forFileName name: String) -> String? {
        switch name.split(separator: ".").last?.lowercased() {
        case "pdf": "application/pdf"
        case "png": "image/png"
        case "jpg", "jpeg": "image/jpeg"
        case "tif", "tiff": "image/tiff"
        default: nil
        }
    }

    func validate(_ v: inout Validator, _ field: String) {
        v.check(sha256.count == 64 && sha256.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) },
                "\(field).sha256", "must be a SHA-256 in lower-case hex")
        v.check(Self.mediaTypes.contains(mediaType), "\(field).mediaType", "must be one of \(Self.mediaTypes.sorted().joined(separator: ", "))")
        v.check((1...Self.maximumSize).contains(size), "\(field).size", "must be 1 to \(Self.maximumSize) bytes")
    }
}

public struct TimeWindow: Codable, Sendable, Hashable {
    public var from: String
    public var to: String

    public init(from: String, to: String) {
        self.from = from
        self.to = to
    }
}

public enum Priority: String, Codable, Sendable, CaseIterable {
    case normal
    /// The fast track: grounds required, one duty approver, the urgent topic, short clocks and
    /// a review after the fact.
    case emergency
}

/// Why a request cannot wait (after the e-Evidence Regulation's emergency cases, art. 3(18)).
public struct EmergencyGrounds: Codable, Sendable, Hashable {
    public enum Ground: String, Codable, Sendable, CaseIterable {
        case threatToLife = "threat-to-life"
        case threatToPhysicalSafety = "threat-to-physical-safety"
        case attackOnCriticalInfrastructure = "attack-on-critical-infrastructure"
        case ongoingCyberattack = "ongoing-cyberattack"
        case childSafety = "child-safety"
        case terroristThreat = "terrorist-threat"
    }

    public var ground: Ground
    /// The facts that make it an emergency, for the duty approver, the provider and the reviewer.
    public var statement: String

    public init(ground: Ground, statement: String) {
        self.ground = ground
        self.statement = statement
    }

    public static let statementLength = 20...4_000
}

/// What a request asks of the provider (after the e-Evidence Regulation's production and
/// preservation orders).
public enum RequestKind: String, Codable, Sendable, CaseIterable {
    /// Hand over the data: packages come back.
    case production
    /// Freeze the data (60 days, extendable once by 30) so that a later production order finds
    /// it; nothing is delivered. The provider confirms with `preserved`.
    case preservation
}

/// What an investigator submits.
public struct RequestSpec: Codable, Sendable, Hashable {
    /// Absent: `production`.
    public var kind: RequestKind?
    public var caseId: UUID
    public var providerId: String
    /// A request to several providers: all of them, `providerId` first. The broker makes one
    /// part per provider, each with its own state, clocks and packages, decided on as one.
    public var providerIds: [String]?
    public var legalBasis: LegalBasis
    public var targets: [Target]
    public var categories: [DataCategory]
    public var window: TimeWindow
    public var priority: Priority
    /// Required for, and only for, priority `emergency`.
    public var emergency: EmergencyGrounds?
    public var notes: String?

    public init(
        caseId: UUID, providerId: String, legalBasis: LegalBasis, targets: [Target],
        categories: [DataCategory], window: TimeWindow, priority: Priority = .normal, emergency: EmergencyGrounds? = nil, notes: String? = nil,
        kind: RequestKind? = nil
    ) {
        self.kind = kind
        self.emergency = emergency
        self.caseId = caseId
        self.providerId = providerId
        self.legalBasis = legalBasis
        self.targets = targets
        self.categories = categories
        self.window = window
        self.priority = priority
        self.notes = notes
    }

    public static let maximumTargets = 1_000
    public static let maximumProviders = 20

    public var isPreservation: Bool { kind == .preservation }

    /// Checks every rule and reports every violation, each naming its field.
    public func validate() throws(ValidationError) {
        var v = Validator()
        v.check(ProviderID.isValid(providerId), "providerId", "must match \(ProviderID.pattern)")
        if let providerIds {
            v.check((2...Self.maximumProviders).contains(providerIds.count), "providerIds", "must name 2 to \(Self.maximumProviders) providers (one: use providerId alone)")
            v.check(Set(providerIds).count == providerIds.count, "providerIds", "must not repeat a provider")
            v.check(providerIds.first == providerId, "providerIds", "must start with providerId")
            for (i, p) in providerIds.enumerated() { v.check(ProviderID.isValid(p), "providerIds[\(i)]", "must match \(ProviderID.pattern)") }
        }
        v.check(!legalBasis.decisionNumber.trimmed.isEmpty && legalBasis.decisionNumber.count <= 200,
                "legalBasis.decisionNumber", "must be 1 to 200 characters")
        v.check(!legalBasis.issuingAuthority.trimmed.isEmpty && legalBasis.issuingAuthority.count <= 500,
                "legalBasis.issuingAuthority", "must be 1 to 500 characters")
        v.check(Self.isCalendarDate(legalBasis.issuedOn), "legalBasis.issuedOn", "must be a date YYYY-MM-DD")
        legalBasis.document?.validate(&v, "legalBasis.document")
        v.check(!targets.isEmpty, "targets", "must name at least one target")
        v.check(targets.count <= Self.maximumTargets, "targets", "must name at most \(Self.maximumTargets) targets")
        v.check(Set(targets).count == targets.count, "targets", "must not repeat a target")
        for (i, t) in targets.enumerated() {
            v.check(TargetFormat.isValid(t), "targets[\(i)].value", TargetFormat.rule(for: t.type))
            t.validateQualifiers(&v, "targets[\(i)]")
        }
        v.check(!categories.isEmpty, "categories", "must name at least one category")
        v.check(Set(categories).count == categories.count, "categories", "must not repeat a category")
        let from = Timestamp.parse(window.from)
        let to = Timestamp.parse(window.to)
        v.check(from != nil, "window.from", "must be an RFC 3339 UTC time ending in Z")
        v.check(to != nil, "window.to", "must be an RFC 3339 UTC time ending in Z")
        if let from, let to { v.check(from < to, "window", "from must be before to") }
        v.check((notes?.count ?? 0) <= 4_000, "notes", "must be at most 4000 characters")
        switch (priority, emergency) {
        case (.emergency, nil):
            v.check(false, "emergency", "is required for priority emergency: give the ground and a statement of the facts")
        case (.emergency, let grounds?):
            v.check(EmergencyGrounds.statementLength.contains(grounds.statement.trimmed.count), "emergency.statement",
                    "must be \(EmergencyGrounds.statementLength.lowerBound) to \(EmergencyGrounds.statementLength.upperBound) characters")
        case (.normal, .some):
            v.check(false, "emergency", "is only for priority emergency")
        case (.normal, nil):
            break
        }
        try v.finish()
    }

    static func isCalendarDate(_ s: String) -> Bool {
        guard s.count == 10 else { return false }
        return Timestamp.parse(s + "T00:00:00Z") != nil
    }
}

public enum ProviderID {
    public static let pattern = "^[a-z0-9][a-z0-9-]{1,62}$"

    /// Provider ids name Kafka topics (`custos.to.<id>`), so they are kept to a safe alphabet.
    public static func isValid(_ id: String) -> Bool {
        guard (2...63).contains(id.utf8.count), let first = id.utf8.first else { return false }
        func ok(_ c: UInt8) -> Bool { (0x61...0x7A).contains(c) || (0x30...0x39).contains(c) }
        return ok(first) && id.utf8.dropFirst().allSatisfy { ok($0) || $0 == UInt8(ascii: "-") }
    }
}

/// Formats of target identifiers. The connector issue adds normalisation; here a value is
/// accepted only in its canonical form.
public enum TargetFormat {
    public static func rule(for type: TargetType) -> String {
        switch type {
        case .msisdn: return "must be a valid telephone number in E.164: + then the country code and number, no national prefix"
        case .imsi: return "must be 15 digits"
        case .imei: return "must be 15 or 16 digits"
        case .ipv4: return "must be a dotted-quad IPv4 address"
        case .ipv6: return "must be an IPv6 address in its RFC 5952 canonical form (lower case, zeros compressed)"
        case .email: return "must be an e-mail address"
        case .account, .bankAccount, .nationalId: return "must be 1 to 128 printable characters"
        }
    }

    public static func isValid(_ t: Target) -> Bool {
        let v = t.value
        let digits = { (s: Substring) in !s.isEmpty && s.utf8.allSatisfy { (0x30...0x39).contains($0) } }
        switch t.type {
        case .msisdn:
            // libphonenumber decides: "+840912345678" (a national prefix after the country
            // code) or a number no plan has are refused, not taken as written.
            guard v.hasPrefix("+"), v.utf8.count <= 16, digits(v.dropFirst()) else { return false }
            return PhoneNumber.isE164(v)
        case .imsi: return v.count == 15 && digits(Substring(v))
        case .imei: return (15...16).contains(v.count) && digits(Substring(v))
        case .ipv4:
            return canonicalIPv4(v) == v
        case .ipv6:
            return canonicalIPv6(v) == v
        case .email:
            let parts = v.split(separator: "@", omittingEmptySubsequences: false)
            return parts.count == 2 && !parts[0].isEmpty && parts[1].contains(".") && v.count <= 254
                && !v.contains(where: { $0.isWhitespace })
        case .account, .bankAccount, .nationalId:
            return (1...128).contains(v.count) && v.allSatisfy { !$0.isNewline && $0 != "\u{0}" }
        }
    }

    /// NFC (UAX #15) for the text identifiers (e-mail, account, bank account, national id),
    /// with an e-mail address's domain in lower case; other types as they are.
    public static func normalizedText(_ type: TargetType, _ value: String) -> String {
        switch type {
        case .email:
            let nfc = value.precomposedStringWithCanonicalMapping
            guard let at = nfc.lastIndex(of: "@") else { return nfc }
            return nfc[..<at] + nfc[at...].lowercased()
        case .account, .bankAccount, .nationalId:
            return value.precomposedStringWithCanonicalMapping
        case .msisdn, .imsi, .imei, .ipv4, .ipv6:
            return value
        }
    }
}

/// The dotted-quad text of an IPv4 address (`inet_pton`, then `inet_ntop`), or nil. Leading
/// zeros are refused, as `inet_pton` refuses them (POSIX: "ddd.ddd.ddd.ddd", each decimal).
public func canonicalIPv4(_ text: String) -> String? {
    guard (7...15).contains(text.utf8.count), !text.contains(":") else { return nil }
    var address = in_addr()
    guard inet_pton(AF_INET, text, &address) == 1 else { return nil }
    var out = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
    guard inet_ntop(AF_INET, &address, &out, socklen_t(out.count)) != nil else { return nil }
    return String(decoding: out.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// The IPv4 address an IPv4-mapped IPv6 address carries (`::ffff:203.0.113.7` →
/// `203.0.113.7`, RFC 4291 §2.5.5.2), or nil for any other text.
public func ipv4MappedAddress(_ text: String) -> String? {
    guard text.utf8.count <= 45, text.contains(":") else { return nil }
    var address = in6_addr()
    guard inet_pton(AF_INET6, text, &address) == 1 else { return nil }
    let bytes = withUnsafeBytes(of: &address) { Array($0) }
    guard bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xFF, bytes[11] == 0xFF else { return nil }
    return bytes[12...].map(String.init).joined(separator: ".")
}

/// The request exactly as approved and sent to the provider. Its hash binds the package
/// to it: the provider puts `requestHash` into the signed manifest.
public struct ApprovedRequest: Codable, Sendable, Hashable {
    /// Absent: a production order.
    public var kind: RequestKind?
    public var requestId: UUID
    public var caseId: UUID
    public var providerId: String
    public var legalBasis: LegalBasis
    public var targets: [Target]
    public var categories: [DataCategory]
    public var window: TimeWindow
    public var priority: Priority
    /// The grounds of an emergency request (absent for a normal one).
    public var emergency: EmergencyGrounds?
    public var submittedBy: String
    public var approvedBy: String
    public var approvedAt: String
    /// A preservation order's end as approved (its extension is a message of its own).
    public var preserveUntil: String?

    public init(requestId: UUID, spec: RequestSpec, submittedBy: String, approvedBy: String, approvedAt: String, preserveUntil: String? = nil) {
        self.preserveUntil = preserveUntil
        // Stored only when it says something: a production order hashes as before kinds existed.
        self.kind = spec.kind == .production ? nil : spec.kind
        self.requestId = requestId
        self.caseId = spec.caseId
        self.providerId = spec.providerId
        self.legalBasis = spec.legalBasis
        self.targets = spec.targets
        self.categories = spec.categories
        self.window = spec.window
        self.priority = spec.priority
        self.emergency = spec.emergency
        self.submittedBy = submittedBy
        self.approvedBy = approvedBy
        self.approvedAt = approvedAt
    }

    public var isPreservation: Bool { kind == .preservation }

    /// SHA-256 over the RFC 8785 canonical JSON of the request, lower-case hex.
    public func hash() throws -> String {
        Digest.sha256Hex(try CanonicalJSON.encode(self))
    }
}

/// The RFC 5952 text form of an IPv6 address (glibc's `inet_ntop` writes it), or nil.
public func canonicalIPv6(_ text: String) -> String? {
    guard text.utf8.count <= 45, text.contains(":") else { return nil }
    var address = in6_addr()
    guard inet_pton(AF_INET6, text, &address) == 1 else { return nil }
    var out = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
    guard inet_ntop(AF_INET6, &address, &out, socklen_t(out.count)) != nil else { return nil }
    return String(decoding: out.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

extension String {
    var trimmed: String { trimmingCharacters(in: .whitespacesAndNewlines) }
}
