import ArgumentParser
import CustosCriteria
import CustosModel
import Foundation

/// Synthetic data for the exec adapter: reads `{"category", "request"}` on stdin and writes
/// records as JSON lines on stdout, then a coverage declaration (the whole window). Every value is made up (seeded by the request id), so it
/// is safe in demos, tests and benchmarks.
@main
struct Synth: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "custos-synth",
        abstract: "Synthetic provider data for Custos' exec adapter (JSON request on stdin, JSON-lines records on stdout).")

    @Option(help: "Records per target.") var recordsPerTarget: Int = 100
    @Option(help: "Extra records for targets that were not asked for (the connector must drop them).") var outOfScope: Int = 0
    @Option(help: "Bytes of filler per record, to make large packages.") var padding: Int = 0

    struct Input: Decodable {
        var category: DataCategory
        var request: ApprovedRequest
    }

    func run() throws {
        guard recordsPerTarget >= 0, outOfScope >= 0, padding >= 0 else { throw ValidationError("counts must not be negative") }
        let input = try JSONDecoder().decode(Input.self, from: FileHandle.standardInput.readDataToEndOfFile())
        let from = Timestamp.parse(input.request.window.from)!.timeIntervalSince1970
        let to = Timestamp.parse(input.request.window.to)!.timeIntervalSince1970
        var rng = SplitMix64(seed: withUnsafeBytes(of: input.request.requestId.uuid) { $0.load(as: UInt64.self) })
        let out = FileHandle.standardOutput
        var buffer = ""
        let filler = String(repeating: "x", count: padding)
        func emit(_ target: Target) throws {
            let t = from + Double(rng.next() % UInt64(max(1, to - from)))
            let time = Self.utc(Int64(t.rounded(.down)))
            let targetJSON = "{\"type\":\"\(target.type.rawValue)\",\"value\":\"\(target.value)\"}"
            let record: String
            switch input.category {
            case .traffic:
                record = "{\"direction\":\"\(rng.next() % 2 == 0 ? "outgoing" : "incoming")\",\"otherParty\":\"+8490\(7_000_000 + rng.next() % 999_999)\",\"durationSeconds\":\(rng.next() % 3600),\"cellId\":\"452-04-\(rng.next() % 65535)-\(rng.next() % 255)\""
            case .location:
                record = "{\"cellId\":\"452-04-\(rng.next() % 65535)-\(rng.next() % 255)\",\"latitude\":\(10 + Double(rng.next() % 1_000_000) / 100_000),\"longitude\":\(105 + Double(rng.next() % 1_000_000) / 100_000)"
            case .ipSession:
                record = "{\"publicIp\":\"203.0.113.\(rng.next() % 255)\",\"publicPort\":\(1024 + rng.next() % 60000),\"bytesUp\":\(rng.next() % 10_000_000),\"bytesDown\":\(rng.next() % 100_000_000)"
            case .subscriber:
                record = "{\"name\":\"Synthetic Subscriber \(rng.next() % 10000)\",\"contractStart\":\"2020-01-0\(1 + rng.next() % 9)\""
            case .financial:
                record = "{\"amount\":\(rng.next() % 100_000_000),\"currency\":\"VND\",\"counterparty\":\"SYN\(rng.next() % 1_000_000)\""
            case .kycDocument:
                record = "{\"documentType\":\"national-id-card\",\"sha256\":\"\(String(repeating: "0", count: 48))\(String(rng.next() % 10_000_000_000_000_000, radix: 16).padding(toLength: 16, withPad: "0", startingAt: 0))\""
            }
            let pad = padding > 0 ? ",\"filler\":\"\(filler)\"" : ""
            // Members in RFC 8785 order, as a careful adapter writes them.
            buffer += "{\"category\":\"\(input.category.rawValue)\",\"record\":\(record)\(pad)},\"target\":\(targetJSON),\"time\":\"\(time)\"}\n"
            if buffer.utf8.count > 1 << 16 {
                try out.write(contentsOf: Data(buffer.utf8))
                buffer.removeAll(keepingCapacity: true)
            }
        }
        for target in input.request.targets {
            for _ in 0..<recordsPerTarget { try emit(target) }
        }
        // What the records cover: the whole window, with a year of retention before it.
        let retained = Timestamp.format(Date(timeIntervalSince1970: from - 365 * 86_400))
        buffer += "{\"coverage\":{\"from\":\"\(input.request.window.from)\",\"to\":\"\(input.request.window.to)\",\"retainedSince\":\"\(retained)\"}}\n"
        // Other people's (valid) numbers: records the connector must not send.
        for i in 0..<outOfScope { try emit(Target(type: .msisdn, value: "+84908\(String(format: "%06d", i % 1_000_000))")) }
        try out.write(contentsOf: Data(buffer.utf8))
    }
}

extension Synth {
    /// `YYYY-MM-DDTHH:MM:SS.000Z` for seconds since 1970 (the civil-from-days algorithm: no
    /// formatter, no lock; millions of records a second).
    static func utc(_ seconds: Int64) -> String {
        let days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        let secs = seconds - days * 86_400
        let (y, m, d) = RFC3339.civil(Int(days))
        func two(_ v: some BinaryInteger) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(y)-\(two(m))-\(two(d))T\(two(secs / 3600)):\(two(secs / 60 % 60)):\(two(secs % 60)).000Z"
    }
}

/// A small deterministic generator (Steele et al., SplitMix64).
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
