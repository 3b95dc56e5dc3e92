import CCustosPhoneNumber

/// Telephone numbers (MSISDN targets) through libphonenumber: the spellings providers really
/// write ("+84 (0) 912 345 678", "0912 345 678", "84912345678", "0084…") to E.164
/// (ITU-T E.164, "+" then the country code and national number, no national prefix).
public enum PhoneNumber {
    /// The E.164 form of `text`, or nil when it is not a valid number for libphonenumber.
    /// `defaultCountryCode` (digits, e.g. "84") is the country calling code a number written
    /// without one belongs to; nil: such a number is not read.
    public static func e164(_ text: String, defaultCountryCode: String? = nil) -> String? {
        let region = defaultCountryCode.flatMap(Self.region(callingCode:)) ?? ""
        var out = [CChar](repeating: 0, count: 32)
        var text = text
        let n = text.withUTF8 { bytes in
            bytes.withMemoryRebound(to: CChar.self) { custos_phone_e164($0.baseAddress, $0.count, region, &out, out.count) }
        }
        guard n > 0 else { return nil }
        return String(decoding: out.prefix(Int(n)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Whether `text` is a valid number already written in E.164.
    public static func isE164(_ text: String) -> Bool {
        text.hasPrefix("+") && e164(text) == text
    }

    /// The region (ISO 3166 alpha-2) of a country calling code ("84" → "VN"), or nil.
    public static func region(callingCode: String) -> String? {
        guard (1...3).contains(callingCode.utf8.count), callingCode.utf8.allSatisfy({ (0x30...0x39).contains($0) }),
              let code = Int32(callingCode) else { return nil }
        var out = [CChar](repeating: 0, count: 8)
        let n = custos_phone_region(code, &out, out.count)
        guard n > 0 else { return nil }
        return String(decoding: out.prefix(Int(n)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
