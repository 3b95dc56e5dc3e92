import Crypto
import CustosCriteria
import CustosModel
import Foundation
import HTTPTypes
import Hummingbird
import MultipartKit
import Mustache
import NIOCore

/// The web portal's settings (`portal.*`). The portal is served by `custos-broker` under
/// `/portal/`, on the same listener as the API.
public struct PortalSettings: Sendable {
    /// `portal.enabled` (default true).
    public var enabled: Bool
    /// `portal.timeZone`: the IANA time zone times are shown in until a person picks another
    /// (default Asia/Ho_Chi_Minh); UTC is always shown beside it.
    public var timeZone: String
    /// Cookies carry `Secure`: set when the broker serves HTTPS.
    public var secureCookies: Bool

    public init(enabled: Bool = true, timeZone: String = "Asia/Ho_Chi_Minh", secureCookies: Bool = false) {
        self.enabled = enabled
        self.timeZone = timeZone
        self.secureCookies = secureCookies
    }

    /// The country calling code of telephone numbers typed without one in the request form.
    public static let defaultCountryCode = "84"

    /// The time zones a person can pick (those the portal's users are expected to work in).
    public static let timeZones = ["Asia/Ho_Chi_Minh", "Asia/Bangkok", "Asia/Singapore", "Asia/Tokyo", "Europe/Paris", "Europe/London", "America/New_York", "UTC"]
}

/// The portal's languages: Vietnamese (the default) and English. Every string a page shows
/// comes from the language's message catalog (`PortalResources/messages/<code>.json`).
public enum PortalLanguage: String, Sendable, CaseIterable {
    case vi, en
    /// The language's own name, as the switch shows it.
    public var name: String { self == .vi ? "Tiếng Việt" : "English" }
    public var other: PortalLanguage { self == .vi ? .en : .vi }
}

/// Templates (swift-mustache), message catalogs and assets, loaded once from the module's
/// resources. Assets are served as `/portal/assets/<name>.<first 12 hex of SHA-256>.<ext>`,
/// immutable, so that a new version is a new address.
public struct PortalResources: Sendable {
    struct Asset: Sendable {
        let bytes: ByteBuffer
        let contentType: String
    }
    let library: MustacheLibrary
    /// language → key → text.
    let catalogs: [PortalLanguage: [String: String]]
    /// Versioned file name → content.
    let assets: [String: Asset]
    /// "css", "js" → the versioned address.
    let assetURLs: [String: String]

    /// Loaded at first use; a missing or malformed resource is a build defect, reported by the
    /// error the portal's routes answer with (and by the unit tests).
    static let shared: Result<PortalResources, any Error> = Result { try PortalResources(directory: Self.directory()) }

    static func directory() throws -> URL {
        guard let url = Bundle.module.url(forResource: "PortalResources", withExtension: nil) else {
            throw BrokerError(.unavailable, "the portal's resources are missing from this build")
        }
        return url
    }

    /// Reads templates (`templates/*.mustache`), catalogs (`messages/*.json`) and assets
    /// (`assets/*`) from `directory`. Throws when one cannot be read or parsed.
    init(directory: URL) throws {
        let fm = FileManager.default
        var library = MustacheLibrary()
        let templates = directory.appendingPathComponent("templates")
        for name in try fm.contentsOfDirectory(atPath: templates.path) where name.hasSuffix(".mustache") {
            let text = try String(contentsOf: templates.appendingPathComponent(name), encoding: .utf8)
            try library.register(text, named: String(name.dropLast(".mustache".count)))
        }
        self.library = library
        var catalogs: [PortalLanguage: [String: String]] = [:]
        for language in PortalLanguage.allCases {
            let data = try Data(contentsOf: directory.appendingPathComponent("messages/\(language.rawValue).json"))
            catalogs[language] = try JSONDecoder().decode([String: String].self, from: data)
        }
        self.catalogs = catalogs
        var assets: [String: Asset] = [:]
        var urls: [String: String] = [:]
        let assetDirectory = directory.appendingPathComponent("assets")
        for name in try fm.contentsOfDirectory(atPath: assetDirectory.path).sorted() {
            let bytes = try Data(contentsOf: assetDirectory.appendingPathComponent(name))
            let ext = (name as NSString).pathExtension
            let base = (name as NSString).deletingPathExtension
            let hash = SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined().prefix(12)
            let versioned = "\(base).\(hash).\(ext)"
            let type = switch ext {
            case "css": "text/css; charset=utf-8"
            case "js": "text/javascript; charset=utf-8"
            case "svg": "image/svg+xml"
            default: "application/octet-stream"
            }
            assets[versioned] = Asset(bytes: ByteBuffer(bytes: bytes), contentType: type)
            urls[ext] = "/portal/assets/\(versioned)"
        }
        self.assets = assets
        assetURLs = urls
    }

    /// The text of `key` in `language`; the key itself when missing (a test keeps the catalogs
    /// complete).
    func text(_ key: String, _ language: PortalLanguage) -> String {
        catalogs[language]?[key] ?? catalogs[.en]?[key] ?? key
    }

    /// Renders `template` with `context`; throws when the template does not exist.
    func render(_ template: String, _ context: [String: Any]) throws -> String {
        guard let html = library.render(context, withTemplate: template) else {
            throw BrokerError(.unavailable, "the portal has no template \(template)")
        }
        return html
    }
}

/// How the portal shows times: in the person's time zone, with UTC beside it
/// ("30/11/2026 21:06 ICT (14:06 UTC)"), and clocks as time left.
public struct PortalTime: Sendable {
    public let timeZone: TimeZone
    public let language: PortalLanguage

    public init(timeZone: TimeZone, language: PortalLanguage) {
        self.timeZone = timeZone
        self.language = language
    }

    /// An RFC 3339 time, read by the project's own reader (`RFC3339`): a page shows hundreds,
    /// and Foundation's formatter takes a lock and microseconds each.
    public static func parse(_ text: String) -> Date? {
        RFC3339.parse(text).map { Date(timeIntervalSince1970: $0.seconds) }
    }

    private static func two(_ v: Int) -> String { v < 10 ? "0\(v)" : "\(v)" }

    /// Year, month, day, hour and minute of `seconds` since 1970 (proleptic Gregorian).
    private static func fields(_ seconds: Int) -> (year: Int, month: Int, day: Int, hour: Int, minute: Int) {
        let days = seconds >= 0 ? seconds / 86400 : (seconds - 86399) / 86400
        let second = seconds - days * 86400
        let (y, m, d) = RFC3339.civil(days)
        return (y, m, d, second / 3600, (second % 3600) / 60)
    }

    /// "dd/MM/yyyy HH:mm GMT+7 (HH:mm UTC)" (the UTC date as well when it differs). The offset
    /// is the zone's at that date, so that it is right across summer time.
    public func show(_ date: Date) -> String {
        let t = Int(date.timeIntervalSince1970.rounded(.down))
        let offset = timeZone.secondsFromGMT(for: date)
        let l = Self.fields(t + offset)
        let localText = "\(Self.two(l.day))/\(Self.two(l.month))/\(l.year) \(Self.two(l.hour)):\(Self.two(l.minute))"
        if offset == 0 { return "\(localText) UTC" }
        let u = Self.fields(t)
        let sign = offset < 0 ? "-" : "+"
        let hours = abs(offset) / 3600, minutes = (abs(offset) % 3600) / 60
        let zone = "GMT\(sign)\(hours)" + (minutes == 0 ? "" : ":\(Self.two(minutes))")
        let utcDate = u.day != l.day ? "\(Self.two(u.day))/\(Self.two(u.month)) " : ""
        return "\(localText) \(zone) (\(utcDate)\(Self.two(u.hour)):\(Self.two(u.minute)) UTC)"
    }

    /// An RFC 3339 time as `show` shows it; the text itself when it does not parse.
    public func show(_ rfc3339: String?) -> String {
        guard let rfc3339 else { return "" }
        return Self.parse(rfc3339).map(show) ?? rfc3339
    }

    /// How long until `deadline` ("2 h 14 min left"), or how long past it ("overdue by 5 min").
    public func left(until deadline: Date, now: Date = Date(), resources: PortalResources) -> (text: String, overdue: Bool) {
        let seconds = Int(deadline.timeIntervalSince(now))
        let span = abs(seconds)
        let d = span / 86400, h = (span % 86400) / 3600, m = (span % 3600) / 60
        var pieces: [String] = []
        if d > 0 { pieces.append("\(d) \(resources.text("unit_day", language))") }
        if h > 0 { pieces.append("\(h) \(resources.text("unit_hour", language))") }
        if d == 0 { pieces.append("\(max(m, span < 60 ? 0 : m)) \(resources.text("unit_minute", language))") }
        let amount = pieces.joined(separator: " ")
        return seconds >= 0
            ? (resources.text("time_left", language).replacingOccurrences(of: "{t}", with: amount), false)
            : (resources.text("time_overdue", language).replacingOccurrences(of: "{t}", with: amount), true)
    }

    /// A `datetime-local` field's value ("2026-11-20T08:30"), read in this time zone, as an
    /// RFC 3339 UTC time; nil when it is not such a value.
    public func utc(fromLocal text: String) -> String? {
        let pieces = text.split(whereSeparator: { "-T:".contains($0) }).map { Int($0) }
        guard pieces.count == 5 || pieces.count == 6, pieces.allSatisfy({ $0 != nil }) else { return nil }
        let (year, month, day, hour, minute) = (pieces[0]!, pieces[1]!, pieces[2]!, pieces[3]!, pieces[4]!)
        let second = pieces.count > 5 ? pieces[5]! : 0
        guard (1...9999).contains(year), (1...12).contains(month), (1...31).contains(day), (0...23).contains(hour), (0...59).contains(minute),
              (0...59).contains(second) else { return nil }
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = timeZone
        let c = DateComponents(year: year, month: month, day: day, hour: hour, minute: minute, second: second)
        guard let date = calendar.date(from: c), calendar.component(.day, from: date) == day else { return nil }
        return Timestamp.format(date)
    }
}

/// A form body: `application/x-www-form-urlencoded` (WHATWG URL §5.1) or `multipart/form-data`
/// (RFC 7578, parsed by MultipartKit). Fields keep their order and may repeat.
struct PortalForm: Sendable {
    struct File: Sendable {
        var fileName: String
        var contentType: String
        var bytes: ByteBuffer
    }
    var fields: [(String, String)] = []
    var files: [String: File] = [:]

    /// The first value of `name`, or nil.
    func value(_ name: String) -> String? { fields.first { $0.0 == name }?.1 }
    /// Every value of `name`, in order.
    func values(_ name: String) -> [String] { fields.filter { $0.0 == name }.map(\.1) }

    /// Parses an urlencoded body: `+` is a space, then percent-decoding; a pair that does not
    /// decode is refused.
    static func urlEncoded(_ text: String) throws -> PortalForm {
        var form = PortalForm()
        for pair in text.split(separator: "&", omittingEmptySubsequences: true) {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ s: Substring) throws -> String {
                guard let d = s.replacingOccurrences(of: "+", with: " ").removingPercentEncoding else {
                    throw BrokerError(.invalid, "the form is not valid application/x-www-form-urlencoded")
                }
                return d
            }
            form.fields.append((try decode(kv[0]), kv.count > 1 ? try decode(kv[1]) : ""))
        }
        return form
    }

    /// Parses a multipart/form-data body with `boundary`. Throws `.invalid` when malformed.
    static func multipart(_ body: ByteBuffer, boundary: String) throws -> PortalForm {
        final class State {
            var form = PortalForm()
            var headers: [(String, String)] = []
            var body = ByteBuffer()
        }
        let state = State()
        let parser = MultipartParser(boundary: boundary)
        parser.onHeader = { name, value in state.headers.append((name.lowercased(), value)) }
        parser.onBody = { chunk in state.body.writeBuffer(&chunk) }
        parser.onPartComplete = {
            let disposition = state.headers.first { $0.0 == "content-disposition" }?.1 ?? ""
            let params = Self.dispositionParameters(disposition)
            if let name = params["name"] {
                if let fileName = params["filename"] {
                    if state.body.readableBytes > 0 || !fileName.isEmpty {
                        let type = state.headers.first { $0.0 == "content-type" }?.1 ?? "application/octet-stream"
                        state.form.files[name] = File(fileName: fileName, contentType: type, bytes: state.body)
                    }
                } else {
                    state.form.fields.append((name, String(buffer: state.body)))
                }
            }
            state.headers = []
            state.body = ByteBuffer()
        }
        do { try parser.execute(body) } catch { throw BrokerError(.invalid, "the form is not valid multipart/form-data") }
        return state.form
    }

    /// `form-data; name="x"; filename="y"` → ["name": "x", "filename": "y"].
    static func dispositionParameters(_ header: String) -> [String: String] {
        var result: [String: String] = [:]
        for piece in header.split(separator: ";").dropFirst() {
            let kv = piece.split(separator: "=", maxSplits: 1)
            guard kv.count == 2 else { continue }
            var value = kv[1].trimmingCharacters(in: .whitespaces)
            if value.hasPrefix("\""), value.hasSuffix("\""), value.count >= 2 { value = String(value.dropFirst().dropLast()) }
            result[kv[0].trimmingCharacters(in: .whitespaces).lowercased()] = value
        }
        return result
    }
}

/// The HTTP headers every portal response carries: a Content-Security-Policy that allows no
/// inline script and no other origin, no framing, no referrer, no sniffing, no caching of pages.
enum PortalHeaders {
    static let contentSecurityPolicy =
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'self'; "
        + "frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

    /// Sets the headers a response does not already carry (the decision document sets its
    /// own policy, to be shown inline by the portal's own pages).
    static func page(_ fields: inout HTTPFields) {
        if fields[.contentSecurityPolicy] == nil { fields[.contentSecurityPolicy] = contentSecurityPolicy }
        if fields[HTTPField.Name("X-Frame-Options")!] == nil { fields[HTTPField.Name("X-Frame-Options")!] = "DENY" }
        fields[HTTPField.Name("Referrer-Policy")!] = "no-referrer"
        fields[.xContentTypeOptions] = "nosniff"
        fields[.cacheControl] = "no-store"
    }
}
