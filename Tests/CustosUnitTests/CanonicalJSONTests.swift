import CustosCanonicalJSON
import Testing

@Suite("RFC 8785 canonical JSON")
struct CanonicalJSONTests {
    // RFC 8785 Appendix B: IEEE 754 bit pattern → ECMAScript serialisation.
    @Test(arguments: [
        ("0000000000000000", "0"), ("8000000000000000", "0"), ("0000000000000001", "5e-324"), ("8000000000000001", "-5e-324"),
        ("7fefffffffffffff", "1.7976931348623157e+308"), ("ffefffffffffffff", "-1.7976931348623157e+308"),
        ("4340000000000000", "9007199254740992"), ("c340000000000000", "-9007199254740992"),
        ("4430000000000000", "295147905179352830000"), ("44b52d02c7e14af5", "9.999999999999997e+22"),
        ("44b52d02c7e14af6", "1e+23"), ("44b52d02c7e14af7", "1.0000000000000001e+23"),
        ("444b1ae4d6e2ef4e", "999999999999999700000"), ("444b1ae4d6e2ef4f", "999999999999999900000"), ("444b1ae4d6e2ef50", "1e+21"),
        ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"), ("3eb0c6f7a0b5ed8d", "0.000001"),
        ("41b3de4355555553", "333333333.3333332"), ("41b3de4355555554", "333333333.33333325"), ("41b3de4355555555", "333333333.3333333"),
        ("41b3de4355555556", "333333333.3333334"), ("41b3de4355555557", "333333333.33333343"),
        ("becbf647612f3696", "-0.0000033333333333333333"), ("43143ff3c1cb0959", "1424953923781206.2"),
    ])
    func numbers(bits: String, expected: String) throws {
        let value = Double(bitPattern: try #require(UInt64(bits, radix: 16)))
        #expect(CanonicalJSON.formatNumber(value) == expected)
    }

    @Test func sortsKeysByUTF16CodeUnits() throws {
        // RFC 8785 §3.2.3's example.
        let input = #"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#
        let out = String(decoding: try CanonicalJSON.canonicalize(Array(input.utf8)), as: UTF8.self)
        let expectedOrder = ["\\r", "1", "\u{80}", "ö", "€", "😀", "דּ"]
        var last = out.startIndex
        for key in expectedOrder {
            let r = try #require(out.range(of: "\"\(key)\":", range: last..<out.endIndex), "key \(key) out of order")
            last = r.upperBound
        }
    }

    @Test func rfcExampleIsReproducedExactly() throws {
        let input = #"{ "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001], "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/", "literals": [null, true, false] }"#
        let expected = #"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        #expect(String(decoding: try CanonicalJSON.canonicalize(Array(input.utf8)), as: UTF8.self) == expected)
    }

    @Test(arguments: [
        (#"{"a":1,"a":2}"#, "duplicate member name"),
        (#"{"a":1} x"#, "trailing data"),
        (#"["\ud800"]"#, "lone high surrogate"),
        (#"[1e400]"#, "out of range"),
        (#"{"a":01}"#, "expected"),
        ("[\"a\u{01}\"]", "control character"),
        (#"[1,]"#, "unexpected"),
        ("", "unexpected end"),
    ])
    func rejectsWhatJCSForbids(input: String, reason: String) {
        #expect {
            _ = try JSONParser.parse(input)
        } throws: { error in
            (error as? JSONParseError)?.reason.contains(reason) == true
        }
    }

    @Test func refusesHostileNesting() {
        let deep = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        #expect(throws: JSONParseError.self) { try JSONParser.parse(deep) }
    }

    @Test func codableEncodingIsCanonical() throws {
        struct S: Codable { var b = "x/y"; var a = [1, 2]; var c: Double = 1.5 }
        #expect(String(decoding: try CanonicalJSON.encode(S()), as: UTF8.self) == #"{"a":[1,2],"b":"x/y","c":1.5}"#)
    }
}
