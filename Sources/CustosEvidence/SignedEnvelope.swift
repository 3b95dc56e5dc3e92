import CustosCanonicalJSON
import CustosModel
import Foundation

/// Turns envelopes into signed bytes and back. Verification re-canonicalises exactly what
/// arrived (less `signature`), so a signature covers unknown members too.
public enum SignedEnvelope {
    public static func encode<Body>(_ envelope: Envelope<Body>, signer: SigningKey) throws -> [UInt8] {
        var signed = envelope
        signed.signature = MessageSignature(alg: signer.algorithm, keyId: signer.publicKey.keyId, value: try signer.sign(envelope.signedBytes()))
        return try CanonicalJSON.encode(signed)
    }

    /// Why a message was not accepted. `description` never quotes message content.
    public struct DecodeError: Error, Sendable, CustomStringConvertible {
        public enum Code: String, Sendable {
            case malformed, unsupportedVersion, badSignature, unknownSender, wrongDirection, badBody
        }
        public var code: Code
        public var reason: String
        public var description: String { "\(code.rawValue): \(reason)" }
    }

    /// Parses `bytes` as an envelope and returns its header, after checking the signature with
    /// the key that `keyFor` returns for the sender.
    public static func open<Bytes: Collection>(
        _ bytes: Bytes, keyFor: (String) -> VerifyingKey?
    ) throws(DecodeError) -> (header: EnvelopeHeader, json: JSONValue) where Bytes.Element == UInt8 {
        try open(bytes, keysFor: { keyFor($0).map { [$0] } ?? [] })
    }

    /// `open`, for a sender with several keys (around a key change): the signature is checked
    /// with the key its `keyId` names (SHA-256 of the key's SubjectPublicKeyInfo), or, when it
    /// names none of them, with each key of its `alg`.
    public static func open<Bytes: Collection>(
        _ bytes: Bytes, keysFor: (String) -> [VerifyingKey]
    ) throws(DecodeError) -> (header: EnvelopeHeader, json: JSONValue) where Bytes.Element == UInt8 {
        let json: JSONValue
        do { json = try JSONParser.parse(bytes) } catch {
            throw DecodeError(code: .malformed, reason: error.description)
        }
        guard case .object(var members) = json else { throw DecodeError(code: .malformed, reason: "envelope is not a JSON object") }
        let header: EnvelopeHeader
        do {
            header = try JSONDecoder().decode(EnvelopeHeader.self, from: Data(CanonicalJSON.serialize(json)))
        } catch {
            throw DecodeError(code: .malformed, reason: "envelope header: \(DecodingErrorDescription(error))")
        }
        guard header.version == 1 else { throw DecodeError(code: .unsupportedVersion, reason: "envelope version \(header.version) is not supported") }
        let keys = keysFor(header.sender)
        guard !keys.isEmpty else { throw DecodeError(code: .unknownSender, reason: "sender is not registered") }
        let algorithms = Set(keys.map(\.algorithm)).sorted().joined(separator: " or ")
        guard case .object(let sig)? = members.removeValue(forKey: "signature"), let alg = sig["alg"]?.stringValue,
              keys.contains(where: { $0.algorithm == alg }), let value = sig["value"]?.stringValue
        else { throw DecodeError(code: .badSignature, reason: "signature missing, or not \(algorithms) as the sender's key requires") }
        let named = keys.filter { $0.algorithm == alg && $0.keyId == sig["keyId"]?.stringValue }
        let candidates = named.isEmpty ? keys.filter { $0.algorithm == alg } : named
        let signed = CanonicalJSON.serialize(.object(members))
        guard candidates.contains(where: { $0.isValidSignature(value, for: signed) }) else {
            throw DecodeError(code: .badSignature, reason: "signature does not verify with the sender's registered key")
        }
        return (header, json)
    }

    /// Decodes the typed envelope from JSON already opened by `open`.
    public static func body<Body: Codable & Sendable>(_ type: Body.Type, from json: JSONValue) throws(DecodeError) -> Envelope<Body> {
        do {
            return try JSONDecoder().decode(Envelope<Body>.self, from: Data(CanonicalJSON.serialize(json)))
        } catch {
            throw DecodeError(code: .badBody, reason: DecodingErrorDescription(error))
        }
    }
}

/// A decoding error as a field path and a rule, without the offending value.
public func decodingViolation(_ error: any Error) -> FieldViolation {
    func path(_ p: [any CodingKey]) -> String {
        let text = p.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined().drop(while: { $0 == "." })
        return text.isEmpty ? "(body)" : String(text)
    }
    switch error {
    case DecodingError.keyNotFound(let key, let ctx): return FieldViolation(field: path(ctx.codingPath + [key]), rule: "is required")
    case DecodingError.typeMismatch(let t, let ctx): return FieldViolation(field: path(ctx.codingPath), rule: "must be \(t)")
    case DecodingError.valueNotFound(let t, let ctx): return FieldViolation(field: path(ctx.codingPath), rule: "must be a \(t), not null")
    case DecodingError.dataCorrupted(let ctx):
        // Foundation's debugDescription can quote the value; only the path is reported.
        return FieldViolation(field: path(ctx.codingPath), rule: "is not an allowed value for this field")
    default: return FieldViolation(field: "(body)", rule: "undecodable input")
    }
}

/// `decodingViolation` as text, for messages that are not HTTP problems.
public func DecodingErrorDescription(_ error: any Error) -> String { decodingViolation(error).description }
