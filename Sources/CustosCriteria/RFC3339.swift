/// The one reader of record times (RFC 3339 §5.6), for every path that meets them: the
/// connector's record gate (JSON fast path, JSON tree, CSV, SQL, file drop) and the judge.
/// Foundation's formatter takes microseconds and a lock each, and drops digits past the
/// millisecond; this reads `YYYY-MM-DD(T|t)HH:MM:SS[.frac](Z|z|±HH:MM)` by hand.
///
/// - Lower-case `t` and `z` are RFC 3339 (§5.6: "may alternatively be lower case"); they are
///   read, and written in upper case.
/// - A leap second (`:60`) is read and kept as written; its instant is that of the next
///   minute's `:00` (the window check is to the second).
/// - Up to nine fraction digits are read and kept exactly: two events a microsecond apart stay
///   two records. More than nine are not a time Custos writes, so the text is not read.
public enum RFC3339 {
    /// A parsed time.
    public struct Reading: Sendable, Equatable {
        /// Seconds since 1970 (fractions included, to a double's precision).
        public var seconds: Double
        /// Whether the text is already the form Custos writes (`schemas/records/record.json`):
        /// upper-case `T` and `Z`, at most nine fraction digits.
        public var canonical: Bool
    }

    /// Reads `text`; nil when it is no RFC 3339 date-time with an offset.
    public static func parse(_ text: String) -> Reading? {
        var text = text
        return text.withUTF8 { parse($0) }
    }

    /// Reads UTF-8 bytes; nil when they are no RFC 3339 date-time with an offset.
    public static func parse(_ b: UnsafeBufferPointer<UInt8>) -> Reading? {
        guard let f = fields(b) else { return nil }
        return Reading(seconds: f.seconds, canonical: f.canonical)
    }

    /// The canonical UTC text of `text` (upper-case `T` and `Z`, its offset applied, every
    /// fraction digit and a leap second kept) and its instant; nil when `text` is not an
    /// RFC 3339 date-time with an offset and at most nine fraction digits.
    public static func utc(_ text: String) -> (text: String, seconds: Double)? {
        var copy = text
        return copy.withUTF8 { b -> (String, Double)? in
            guard let f = fields(b), f.fractionDigits <= 9 else { return nil }
            if f.canonical { return (text, f.seconds) }
            // Offsets are whole minutes: move the minute, keep second and fraction as written.
            let minutes = f.days * 1440 + f.hour * 60 + f.minute - f.offsetMinutes
            let days = minutes >= 0 ? minutes / 1440 : (minutes - 1439) / 1440
            let minuteOfDay = minutes - days * 1440
            let (year, month, day) = civil(days)
            guard (0...9999).contains(year) else { return nil }
            var out = "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T\(pad(minuteOfDay / 60, 2)):\(pad(minuteOfDay % 60, 2)):\(pad(f.second, 2))"
            if f.fractionDigits > 0 {
                out += "." + String(decoding: UnsafeBufferPointer(rebasing: b[f.fractionStart..<(f.fractionStart + f.fractionDigits)]), as: UTF8.self)
            }
            return (out + "Z", f.seconds)
        }
    }

    struct Fields {
        var days, hour, minute, second, offsetMinutes: Int
        var fractionStart, fractionDigits: Int
        var seconds: Double
        var canonical: Bool
    }

    static func fields(_ b: UnsafeBufferPointer<UInt8>) -> Fields? {
        func digits(_ at: Int, _ n: Int) -> Int? {
            guard at + n <= b.count else { return nil }
            var v = 0
            for i in at..<(at + n) {
                let d = Int(b[i]) - 48
                guard (0...9).contains(d) else { return nil }
                v = v * 10 + d
            }
            return v
        }
        guard b.count >= 20, let year = digits(0, 4), b[4] == 0x2D, let month = digits(5, 2), b[7] == 0x2D, let day = digits(8, 2),
              b[10] == 0x54 || b[10] == 0x74, let hour = digits(11, 2), b[13] == 0x3A, let minute = digits(14, 2), b[16] == 0x3A,
              let second = digits(17, 2),
              (1...12).contains(month), (1...daysIn(month, year)).contains(day), hour < 24, minute < 60, second < 61
        else { return nil }
        var canonical = b[10] == 0x54
        var i = 19
        var fraction = 0.0
        let fractionStart = 20
        var fractionDigits = 0
        if i < b.count, b[i] == 0x2E {
            i += 1
            var scale = 0.1
            while i < b.count, (0x30...0x39).contains(b[i]) {
                fraction += Double(b[i] - 48) * scale
                scale /= 10
                i += 1
            }
            fractionDigits = i - fractionStart
            guard fractionDigits > 0 else { return nil }
            if fractionDigits > 9 { canonical = false }
        }
        var offset = 0
        guard i < b.count else { return nil }
        if b[i] == 0x5A || b[i] == 0x7A {
            if b[i] == 0x7A { canonical = false }
            i += 1
        } else if b[i] == 0x2B || b[i] == 0x2D, let oh = digits(i + 1, 2), i + 3 < b.count, b[i + 3] == 0x3A, let om = digits(i + 4, 2), oh < 24, om < 60 {
            offset = (oh * 60 + om) * (b[i] == 0x2B ? 1 : -1)
            canonical = false
            i += 6
        } else {
            return nil
        }
        guard i == b.count else { return nil }
        let days = daysFromCivil(year, month, day)
        let seconds = Double(days * 86_400 + hour * 3600 + minute * 60 + second - offset * 60) + fraction
        return Fields(days: days, hour: hour, minute: minute, second: second, offsetMinutes: offset, fractionStart: fractionStart,
                      fractionDigits: fractionDigits, seconds: seconds, canonical: canonical)
    }

    /// Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    static func daysFromCivil(_ year: Int, _ month: Int, _ day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    /// The date of a day number since 1970-01-01 (Howard Hinnant's civil_from_days).
    public static func civil(_ days: Int) -> (year: Int, month: Int, day: Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }

    static func pad(_ n: Int, _ width: Int) -> String {
        let s = String(n)
        return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
    }

    static func daysIn(_ month: Int, _ year: Int) -> Int {
        switch month {
        case 2: (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: 30
        default: 31
        }
    }
}
