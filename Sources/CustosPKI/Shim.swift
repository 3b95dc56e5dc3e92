import CCustosOpenSSL
import Foundation

/// An OpenSSL failure, with OpenSSL's reason (never input bytes).
public struct PKIError: Error, Sendable, CustomStringConvertible {
    public var reason: String
    public var description: String { "PKI: \(reason)" }
}

/// Calls a shim function with an error buffer and an output buffer, copies the output into
/// Swift memory and frees the C buffer at once: no C memory outlives the call.
enum Shim {
    struct Outcome {
        var status: Int32
        var output: [UInt8]
        var error: String
    }

    static func call(_ body: (UnsafeMutablePointer<custos_buf>, UnsafeMutablePointer<CChar>, Int) -> Int32) -> Outcome {
        var buf = custos_buf(data: nil, len: 0)
        var err = [CChar](repeating: 0, count: 512)
        let status = err.withUnsafeMutableBufferPointer { e in body(&buf, e.baseAddress!, e.count) }
        defer { custos_buf_free(&buf) }
        let output = buf.data.map { Array(UnsafeBufferPointer(start: $0, count: buf.len)) } ?? []
        let text = String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return Outcome(status: status, output: output, error: text)
    }

    static func required(_ o: Outcome) throws(PKIError) -> [UInt8] {
        guard o.status == 1 else { throw PKIError(reason: o.error.isEmpty ? "operation failed" : o.error) }
        return o.output
    }
}

extension Array where Element == UInt8 {
    /// Runs `body` with a pointer to the bytes (never nil, even when empty) and the count.
    func withPointer<R>(_ body: (UnsafePointer<UInt8>, Int) -> R) -> R {
        if isEmpty { return [0].withUnsafeBufferPointer { body($0.baseAddress!, 0) } }
        return withUnsafeBufferPointer { body($0.baseAddress!, $0.count) }
    }
}

extension String {
    var bytes: [UInt8] { Array(utf8) }
}
