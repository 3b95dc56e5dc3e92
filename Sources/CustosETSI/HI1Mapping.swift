import CustosModel
import Foundation

/// How Custos' request states read as TS 103 120 task statuses (`task:Status`, dictionary
/// `ETSI/LDTaskStatus`, and `task:DesiredStatus`, `ETSI/LDTaskDesiredStatus`). The table is
/// `schemas/etsi/README.md` §Status; a test holds the two equal.
///
/// TS 103 120 V1.12.1 defines no preservation statuses, so a preservation order's are Custos'
/// own dictionary entries (`Custos/LDTaskStatus/…`). Every answer also carries the exact state
/// as a flag, `Custos/RequestState/<state>`.
public enum HI1Status {
    /// The `task:Status` of a request in this state.
    public static func status(_ state: RequestState, kind: RequestKind) -> HI1.Entry {
        let value: String
        switch state {
        case .draft, .submitted: value = "AwaitingApproval"
        case .approved, .dispatched, .acknowledged, .inProgress, .partiallyDelivered: value = "AwaitingDisclosure"
        case .delivered, .verified: value = "Disclosed"
        case .refused: value = "DisclosureNotAvailable"
        case .rejected: value = "Rejected"
        case .withdrawn, .revoked, .expired: value = "Cancelled"
        case .preserved: return HI1.Entry("Custos", "LDTaskStatus", "Preserved")
        case .released: return HI1.Entry("Custos", "LDTaskStatus", "Released")
        }
        if kind == .preservation, ![.draft, .submitted, .rejected, .withdrawn].contains(state) {
            // A preservation order never discloses: its open states await preservation.
            switch state {
            case .refused: return HI1.Entry("Custos", "LDTaskStatus", "PreservationNotAvailable")
            case .expired: return HI1.Entry("Custos", "LDTaskStatus", "Expired")
            case .revoked: return HI1.Entry("ETSI", "LDTaskStatus", "Cancelled")
            default: return HI1.Entry("Custos", "LDTaskStatus", "AwaitingPreservation")
            }
        }
        return HI1.Entry("ETSI", "LDTaskStatus", value)
    }

    /// The `task:DesiredStatus`: what the authority asks of the provider.
    public static func desiredStatus(_ state: RequestState, kind: RequestKind) -> HI1.Entry {
        if [.rejected, .withdrawn, .revoked, .expired, .released].contains(state) { return HI1.Entry("ETSI", "LDTaskDesiredStatus", "Cancelled") }
        return kind == .preservation ? HI1.Entry("Custos", "LDTaskDesiredStatus", "AwaitingPreservation")
            : HI1.Entry("ETSI", "LDTaskDesiredStatus", "AwaitingDisclosure")
    }
}

/// Custos target types and HI-1 `RequestValue`s (`FormatType` of ETSI TS 103 280 where one
/// fits; Custos' own `FormatOwner` otherwise).
enum HI1TargetFormat {
    static func requestValue(_ t: Target) -> (HI1.Entry, String) {
        func etsi(_ name: String, _ value: String) -> (HI1.Entry, String) { (HI1.Entry("ETSI", "FormatType", name), value) }
        func custos(_ name: String, _ value: String) -> (HI1.Entry, String) { (HI1.Entry("Custos", "FormatType", name), value) }
        switch t.type {
        case .msisdn: return etsi("InternationalE164", String(t.value.dropFirst()))
        case .imsi: return etsi("IMSI", t.value)
        case .imei: return etsi(t.value.count == 16 ? "IMEISV" : "IMEICheckDigit", t.value)
        case .ipv4, .ipv6:
            if let at = t.at {
                let address = t.type == .ipv6 && t.port != nil ? "[\(t.value)]" : t.value
                return custos("IPAddressObserved", address + (t.port.map { ":\($0)" } ?? "") + "@" + at)
            }
            return t.type == .ipv4 ? etsi("IPv4Address", t.value) : etsi("IPv6Address", expandedIPv6(t.value) ?? t.value)
        case .email: return etsi(t.value.utf8.allSatisfy { $0 < 0x80 } ? "EmailAddress" : "InternationalizedEmailAddress", t.value)
        case .account: return custos("PlatformAccount", "\(t.platform ?? ""):\(t.value)")
        case .bankAccount: return custos("BankAccount", t.value)
        case .nationalId: return custos("NationalID", t.value)
        }
    }

    enum Refusal: Error { case unsupported(String), invalid(String) }

    /// The target a `RequestValue` names.
    /// - Throws: `.unsupported` for a format Custos has no target type for, `.invalid` for a
    ///   value that does not read as its format.
    static func target(owner: String, name: String, value: String) throws(Refusal) -> Target {
        let digits = !value.isEmpty && value.utf8.allSatisfy { (0x30...0x39).contains($0) }
        switch (owner, name) {
        case ("ETSI", "InternationalE164"), ("ETSI", "GPSIMSISDN"):
            guard digits else { throw .invalid("an E.164 number is digits only, without +") }
            return Target(type: .msisdn, value: "+" + value)
        case ("ETSI", "TELURI"):
            guard value.hasPrefix("tel:+") else { throw .invalid("a TEL URI for an E.164 number starts with tel:+") }
            return Target(type: .msisdn, value: String(value.dropFirst(4)))
        case ("ETSI", "IMSI"), ("ETSI", "SUPIIMSI"):
            return Target(type: .imsi, value: value)
        case ("ETSI", "IMEICheckDigit"), ("ETSI", "IMEISV"):
            return Target(type: .imei, value: value)
        case ("ETSI", "IMEI"):
            guard digits, value.count == 14 else { throw .invalid("an IMEI without its check digit is 14 digits") }
            return Target(type: .imei, value: value + String(luhnDigit(value)))
        case ("ETSI", "IPv4Address"):
            guard let v = canonicalIPv4(value) else { throw .invalid("not a dotted-quad IPv4 address") }
            return Target(type: .ipv4, value: v)
        case ("ETSI", "IPv6Address"):
            guard let v = canonicalIPv6(value) else { throw .invalid("not an IPv6 address") }
            return Target(type: .ipv6, value: v)
        case ("ETSI", "EmailAddress"), ("ETSI", "InternationalizedEmailAddress"):
            return Target(type: .email, value: value)
        case ("Custos", "IPAddressObserved"):
            return try observedAddress(value)
        case ("Custos", "PlatformAccount"):
            guard let colon = value.firstIndex(of: ":") else { throw .invalid("a platform account is <platform>:<account>") }
            return Target(type: .account, value: String(value[value.index(after: colon)...]), platform: String(value[..<colon]))
        case ("Custos", "BankAccount"): return Target(type: .bankAccount, value: value)
        case ("Custos", "NationalID"): return Target(type: .nationalId, value: value)
        default:
            throw .unsupported("FormatType \(owner)/\(name) names no kind of target Custos requests stored data for")
        }
    }

    /// `addr@at`, `addr:port@at` or `[v6]:port@at`.
    static func observedAddress(_ value: String) throws(Refusal) -> Target {
        guard let atSign = value.lastIndex(of: "@") else { throw .invalid("an observed address is <address>[:port]@<time>") }
        let at = String(value[value.index(after: atSign)...])
        var address = String(value[..<atSign])
        var port: Int?
        if address.hasPrefix("["), let close = address.firstIndex(of: "]") {
            let rest = address[address.index(after: close)...]
            guard rest.hasPrefix(":"), let p = Int(rest.dropFirst()) else { throw .invalid("a bracketed IPv6 address is followed by :port") }
            port = p
            address = String(address[address.index(after: address.startIndex)..<close])
        } else if !address.contains("::"), address.filter({ $0 == ":" }).count == 1, let colon = address.firstIndex(of: ":") {
            guard let p = Int(address[address.index(after: colon)...]) else { throw .invalid("the port is not a number") }
            port = p
            address = String(address[..<colon])
        }
        if let v4 = canonicalIPv4(address) { return Target(type: .ipv4, value: v4, port: port, at: at) }
        if let v6 = canonicalIPv6(address) { return Target(type: .ipv6, value: v6, port: port, at: at) }
        throw .invalid("not an IPv4 or IPv6 address")
    }

    /// The full eight-group form TS 103 280's `IPv6Address` pattern asks for.
    static func expandedIPv6(_ text: String) -> String? {
        var address = in6_addr()
        guard inet_pton(AF_INET6, text, &address) == 1 else { return nil }
        let b = withUnsafeBytes(of: &address) { Array($0) }
        return stride(from: 0, to: 16, by: 2).map { String(format: "%02x%02x", b[$0], b[$0 + 1]) }.joined(separator: ":")
    }

    /// The Luhn check digit of a 14-digit IMEI (3GPP TS 23.003 Annex B).
    static func luhnDigit(_ digits: String) -> Int {
        var sum = 0
        for (i, c) in digits.reversed().enumerated() {
            var d = Int(c.asciiValue! - 48)
            if i % 2 == 0 { d *= 2; if d > 9 { d -= 9 } }
            sum += d
        }
        return (10 - sum % 10) % 10
    }
}
