import CustosCanonicalJSON
import CustosCriteria
import CustosModel
import Foundation

/// What every adapter's records pass through before they are spooled: the frame is read
/// (`category`, `target`, `time`, `record`), the target put in its canonical form (E.164,
/// dotted quad without leading zeros, RFC 5952, digits only for IMSI/IMEI, lower-case e-mail
/// domain) and the time in UTC (`Z`); then the record is kept only when it is inside the
/// request's targets, category and window. Others are counted by reason, never sent. A record
/// already in canonical form keeps its bytes; one that changed is written again as RFC 8785
/// canonical JSON.
public struct RecordGate: Sendable {
    /// `normalisation.defaultCountryCode`: the country calling code (digits, e.g. `84`) that
    /// turns a national number (`0912…`) into E.164 (`+84912…`). Unset: national numbers are
    /// refused as not canonical.
    public struct Settings: Sendable, Hashable {
        public var defaultCountryCode: String?
        public init(defaultCountryCode: String? = nil) { self.defaultCountryCode = defaultCountryCode }
    }

    /// Why a record was not sent.
    public enum Drop: String, Sendable, CaseIterable, Codable {
        /// About a target the request does not name.
        case target
        /// Of a category the request does not ask for.
        case category
        /// Of another category the request asks for than the adapter was run for (a file drop
        /// holds every category; each is read on its own).
        case elsewhere
        /// Outside the request's time window.
        case window
        /// No frame that can be read: not an object, or no category, target or time, or a
        /// time without a UTC offset.
        case unreadable
    }

    public enum Outcome {
        case record(Target, [UInt8])
        /// Out of scope: another target, category or time. Never the request's business.
        case dropped(Drop)
        /// Could not be read (`Drop.unreadable`): not sent, counted in the manifest's
        /// `notSent` under `reason` — in the result of `target` and `category` when both are
        /// known (`unreadable-time`), by `category` when only that is (`unreadable-target`).
        case unreadable(Manifest.NotSent.Reason, Target?, DataCategory?)

        /// Why it was not sent, or nil for a record.
        public var drop: Drop? {
            switch self {
            case .record: nil
            case .dropped(let why): why
            case .unreadable: .unreadable
            }
        }
    }

    let settings: Settings
    let category: DataCategory
    let categories: Set<DataCategory>
    let targets: Set<Target>
    let window: ClosedRange<Date>
    /// The request's plain targets (no port, time or platform) with their value's bytes: the
    /// fast path's lookup. Their values are canonical (checked when the request was submitted).
    let plainList: [(type: TargetType, value: [UInt8], target: Target)]
    /// The window in seconds since 1970.
    let seconds: ClosedRange<Double>
    var frames = RecordFrameReader()

    public init(request: ApprovedRequest, category: DataCategory, settings: Settings = Settings()) {
        self.settings = settings
        self.category = category
        categories = Set(request.categories)
        targets = Set(request.targets)
        let from = Timestamp.parse(request.window.from) ?? .distantPast, to = Timestamp.parse(request.window.to) ?? .distantFuture
        window = min(from, to)...max(from, to)
        plainList = request.targets.filter { $0.port == nil && $0.at == nil && $0.platform == nil }.map { ($0.type, Array($0.value.utf8), $0) }
        seconds = window.lowerBound.timeIntervalSince1970...window.upperBound.timeIntervalSince1970
    }

    /// What the fast path decides: the line goes as it is, or is dropped.
    public enum Fast {
        case keep(Target)
        case drop(Drop)
    }

    /// The fast path: a line already in canonical form (RFC 8785 member order, a plain
    /// target of the request's, a UTC time) is decided without parsing or copying it. Nil
    /// when the line needs the full look.
    public mutating func admitFast(_ line: UnsafeRawBufferPointer) -> Fast? {
        guard let frame = frames.read(line), frame.utc, frame.category == category, let target = plainTarget(frame.targetType, frame.targetValue)
        else { return nil }
        guard seconds.contains(frame.seconds) else { return .drop(.window) }
        return .keep(target)
    }

    /// The request's plain target of this type and value, compared byte by byte.
    @inline(__always) func plainTarget(_ type: TargetType, _ value: UnsafeRawBufferPointer) -> Target? {
        for p in plainList where p.type == type && p.value.count == value.count {
            if p.value.withUnsafeBytes({ memcmp($0.baseAddress!, value.baseAddress!, value.count) == 0 }) { return p.target }
        }
        return nil
    }

    /// One record line (without its newline) as the adapter wrote it: the fast path, else
    /// the full look.
    public mutating func admit(line: [UInt8]) -> Outcome {
        switch line.withUnsafeBytes({ admitFast($0) }) {
        case .keep(let target)?: return .record(target, line)
        case .drop(let why)?: return .dropped(why)
        case nil: break
        }
        guard case .object(let frame)? = try? JSONParser.parse(line) else { return .unreadable(.unreadableRecord, nil, nil) }
        return admit(frame, original: line)
    }

    /// One record as an object: `{category, target, time, record}`.
    public func admit(_ frame: [String: JSONValue], original: [UInt8]? = nil) -> Outcome {
        guard let c = frame["category"]?.stringValue, let cat = DataCategory(rawValue: c) else { return .unreadable(.unreadableRecord, nil, nil) }
        // Scope first, then what it takes to tie the record to a result, then its time.
        guard cat == category else { return .dropped(categories.contains(cat) ? .elsewhere : .category) }
        guard case .object(let t)? = frame["target"], let writtenType = t["type"]?.stringValue.flatMap(TargetType.init(rawValue:)),
              let value = t["value"]?.stringValue, let (type, canonical) = Self.canonical(writtenType, value, countryCode: settings.defaultCountryCode)
        else { return .unreadable(.unreadableTarget, nil, cat) }
        var port: Int?
        if case .number(let n)? = t["port"], n == n.rounded(), (1...65535).contains(n) { port = Int(n) }
        let target = Target(type: type, value: canonical, port: port, at: t["at"]?.stringValue, platform: t["platform"]?.stringValue)
        guard targets.contains(target) else { return .dropped(.target) }
        guard let timeText = frame["time"]?.stringValue, let time = RFC3339.utc(timeText) else { return .unreadable(.unreadableTime, target, cat) }
        guard seconds.contains(time.seconds) else { return .dropped(.window) }
        // Kept byte for byte when nothing changed (String == is canonical equivalence: the
        // bytes are compared, so an NFD value is written again in NFC).
        if let original, type == writtenType, canonical.utf8.elementsEqual(value.utf8), time.text.utf8.elementsEqual(timeText.utf8) {
            return .record(target, original)
        }
        var out = frame
        var tt = t
        tt["type"] = .string(type.rawValue)
        tt["value"] = .string(canonical)
        out["target"] = .object(tt)
        out["time"] = .string(time.text)
        return .record(target, CanonicalJSON.serialize(.object(out)))
    }

    /// A target in its canonical form, or nil when its value cannot be read as its type:
    /// - telephone numbers through libphonenumber to E.164 (`defaultCountryCode` for numbers
    ///   written without one): "+84 (0) 912 345 678", "0912 345 678", "84912345678";
    /// - IPv4 through `inet_pton` (zero-padded quads, "010.000.000.001", read as decimal);
    ///   an IPv4-mapped IPv6 address (`::ffff:203.0.113.7`, RFC 4291 §2.5.5.2) is the IPv4
    ///   address it carries, whichever type it was written as;
    /// - IPv6 through `inet_pton`/`inet_ntop` (RFC 5952 text);
    /// - IMSI and IMEI: digits only;
    /// - e-mail, account, bank account and national id in NFC (UAX #15), an e-mail domain in
    ///   lower case.
    public static func canonical(_ type: TargetType, _ raw: String, countryCode: String?) -> (type: TargetType, value: String)? {
        let value = raw.trimmingCharacters(in: .whitespaces)
        switch type {
        case .msisdn:
            return PhoneNumber.e164(value, defaultCountryCode: countryCode).map { (.msisdn, $0) }
        case .imsi, .imei:
            let digits = String(value.filter { !" -".contains($0) })
            return digits.isEmpty ? nil : (type, digits)
        case .ipv4, .ipv6:
            if let v4 = ipv4MappedAddress(value) { return (.ipv4, v4) }
            if type == .ipv6 { return canonicalIPv6(value).map { (.ipv6, $0) } }
            if let v4 = canonicalIPv4(value) { return (.ipv4, v4) }
            // Zero-padded quads, as some exports write them: each group read as decimal.
            let parts = value.split(separator: ".", omittingEmptySubsequences: false)
            guard parts.count == 4, parts.allSatisfy({ (1...3).contains($0.utf8.count) && $0.utf8.allSatisfy { (0x30...0x39).contains($0) } }) else { return nil }
            return canonicalIPv4(parts.map { String(Int($0)!) }.joined(separator: ".")).map { (.ipv4, $0) }
        case .email, .account, .bankAccount, .nationalId:
            return value.isEmpty ? nil : (type, TargetFormat.normalizedText(type, value))
        }
    }
}

/// A value behind a lock, shared with a cancellation handler (the SQL adapter's flags).
final class LockedValue<Value>: @unchecked Sendable {
    private var value: Value
    private let lock = NSLock()
    init(_ value: Value) { self.value = value }
    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}
