import CustosCanonicalJSON
import Foundation
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

@Suite("Encoding Swift values as canonical JSON")
struct CanonicalEncoderTests {
    struct Sample: Codable, Equatable {
        var id: UUID
        var ids: [UUID]
        var optional: UUID?
        var absent: String?
        var nested: [String: [Int]]
        var data: Data
        var text: String
        var ratio: Double
        var big: Int64
    }

    static let uuid = UUID(uuidString: "3F2C5B8E-1A2B-4C3D-8E9F-0123456789AB")!

    @Test func writesUUIDsInLowerCaseAndTheRestAsJSONEncoderDoes() throws {
        let value = Sample(id: Self.uuid, ids: [Self.uuid], optional: Self.uuid, absent: nil, nested: ["b": [2, 1], "a": []],
                           data: Data([0, 255, 1]), text: "é\u{0}\"/", ratio: 0.5, big: 9_007_199_254_740_993)
        let text = String(decoding: try CanonicalJSON.encode(value), as: UTF8.self)
        let lower = "3f2c5b8e-1a2b-4c3d-8e9f-0123456789ab"
        #expect(text == #"{"big":9007199254740992,"data":"AP8B","id":"\#(lower)","ids":["\#(lower)"],"nested":{"a":[],"b":[2,1]},"optional":"\#(lower)","ratio":0.5,"text":"é\u0000\"/"}"#)
        // The same tree JSONEncoder would have made, but for the ids' case.
        let encoder = JSONEncoder()
        let viaFoundation = String(decoding: try CanonicalJSON.canonicalize(try encoder.encode(value)), as: UTF8.self)
        #expect(viaFoundation == text.replacingOccurrences(of: lower, with: Self.uuid.uuidString))
        // Upper case is still read.
        let decoded = try JSONDecoder().decode(Sample.self, from: Data(viaFoundation.utf8))
        #expect(decoded.id == Self.uuid)
    }

    @Test func refusesNumbersJSONCannotHold() {
        #expect(throws: EncodingError.self) { try CanonicalJSON.encode(["x": Double.nan]) }
        #expect(throws: EncodingError.self) { try CanonicalJSON.encode([Double.infinity]) }
    }

    @Test(.timeLimit(.minutes(1))) func aMillionArrayItemsEncodeInLinearTime() throws {
        // The manifest lists every chunk: building its array must not copy it per item.
        let items = (0..<1_000_000).map { $0 }
        let bytes = try CanonicalJSON.encode(items)
        #expect(bytes.count > 6_000_000 && bytes.first == UInt8(ascii: "["))
    }

    @Test func prettyIsTheCanonicalFormIndented() throws {
        let value: JSONValue = .object(["b": .array([.number(1), .string("x")]), "a": .object([:]), "c": .array([])])
        #expect(CanonicalJSON.pretty(value) == "{\n  \"a\": {},\n  \"b\": [\n    1,\n    \"x\"\n  ],\n  \"c\": []\n}")
        let reparsed = try CanonicalJSON.canonicalize(Array(CanonicalJSON.pretty(value).utf8))
        #expect(reparsed == CanonicalJSON.serialize(value))
    }
}
