import CustosCanonicalJSON
import CustosModel
import Foundation
import Synchronization

/// Runs an extraction program: it gets `{"category": …, "request": …}` as JSON on stdin and
/// writes records as JSON lines on stdout. Each line must be a JSON object with `category`
/// and `target` (`{"type", "value"}`); lines outside the request's targets or category are
/// not sent, only counted. A line `{"coverage": {"from", "to", "retainedSince"?, "gaps"?},
/// "target"?: …}` instead declares what the records cover (for one target, or without
/// `target` for all): it goes into the manifest's results, for the four criteria's đủ. Its
/// stderr goes to a file in the job directory (it may name targets, so it is never logged).
public struct ExecAdapter: Sendable {
    public var command: [String]
    public var timeout: Duration

    public init(command: [String], timeout: Duration) {
        self.command = command
        self.timeout = timeout
    }

    public struct Failure: Error, CustomStringConvertible, Sendable {
        public var reason: String
        public var description: String { "adapter: \(reason)" }
    }

    public struct Output: Sendable {
        public var outOfScope: Int
    }

    /// Receives each in-scope record (its bytes without the newline) with its target, on the
    /// adapter's reading thread.
    public typealias Sink = @Sendable (Target, UnsafeRawBufferPointer) throws -> Void
    /// Receives each coverage declaration: for one target, or (nil) for all of them.
    public typealias CoverageSink = @Sendable (Target?, Manifest.Coverage) -> Void

    /// Runs the adapter for one category, handing every in-scope record to `sink`. Cancelling
    /// the calling task stops the program (SIGTERM) and throws a `Failure`.
    public func run(request: ApprovedRequest, category: DataCategory, sink: @escaping Sink, coverage: @escaping CoverageSink = { _, _ in },
                    stderrFile: URL) async throws -> Output {
        let input = try CanonicalJSON.encode(AdapterInput(category: category, request: request))
        let stopper = Stopper()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                // The adapter's pipes are read with blocking calls: keep them off the cooperative pool.
                let thread = Thread {
                    continuation.resume(with: Result {
                        try runBlocking(input: input, request: request, category: category, sink: sink, coverage: coverage, stderrFile: stderrFile, stopper: stopper)
                    })
                }
                thread.name = "custos-exec-adapter"
                thread.start()
            }
        } onCancel: {
            stopper.stop()
        }
    }

    /// Stops a running program on cancellation, or one about to start.
    final class Stopper: Sendable {
        private let state = Mutex<(pid: Int32?, stopped: Bool)>((nil, false))

        func stop() {
            let pid = state.withLock { s -> Int32? in s.stopped = true; return s.pid }
            if let pid { kill(pid, SIGTERM) }
        }

        /// Records the started program; false when a stop came first (it is stopped at once).
        func started(_ pid: Int32) -> Bool {
            let stopped = state.withLock { s -> Bool in s.pid = pid; return s.stopped }
            if stopped { kill(pid, SIGTERM) }
            return !stopped
        }

        var stopped: Bool { state.withLock { $0.stopped } }
    }

    struct AdapterInput: Codable {
        var category: DataCategory
        var request: ApprovedRequest
    }

    private func runBlocking(input: [UInt8], request: ApprovedRequest, category: DataCategory, sink: Sink, coverage: CoverageSink, stderrFile: URL,
                             stopper: Stopper) throws -> Output {
        guard let program = command.first, let executable = Self.resolve(program) else {
            throw Failure(reason: "program \(command.first ?? "(none)") not found")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = Array(command.dropFirst())
        let stdin = Pipe(), stdout = Pipe()
        _ = FileManager.default.createFile(atPath: stderrFile.path, contents: nil)
        process.standardInput = stdin
        process.standardOutput = stdout
        process.standardError = try FileHandle(forWritingTo: stderrFile)
        try process.run()
        _ = stopper.started(process.processIdentifier)
        let deadline = DispatchTime.now() + .seconds(Int(timeout.components.seconds))
        let timer = DispatchSource.makeTimerSource()
        timer.schedule(deadline: deadline)
        timer.setEventHandler { if process.isRunning { process.terminate() } }
        timer.resume()
        defer { timer.cancel() }

        // Feed stdin from its own thread, so a program that writes before reading cannot deadlock.
        let writer = Thread {
            try? stdin.fileHandleForWriting.write(contentsOf: input)
            try? stdin.fileHandleForWriting.close()
        }
        writer.start()

        let targets = Set(request.targets)
        var outOfScope = 0
        var pending: [UInt8] = []
        var lineNumber = 0
        var failure: Failure?
        let reader = stdout.fileHandleForReading
        while true {
            let data = reader.availableData
            if data.isEmpty { break }
            if failure != nil { continue }  // drain so the program can exit
            pending.append(contentsOf: data)
            var start = 0
            while let nl = pending[start...].firstIndex(of: 0x0A) {
                let line = pending[start..<nl]
                start = nl + 1
                lineNumber += 1
                if line.allSatisfy({ $0 == 0x20 || $0 == 0x0D }) { continue }
                if case .object(let declared)? = try? JSONParser.parse(line), let c = declared["coverage"] {
                    guard let covered = Self.coverage(c), declared.keys.allSatisfy({ $0 == "coverage" || $0 == "target" }) else {
                        failure = Failure(reason: "output line \(lineNumber) is not a coverage declaration (from, to in RFC 3339 UTC)")
                        break
                    }
                    var target: Target?
                    if case .object(let t)? = declared["target"] {
                        guard let type = t["type"]?.stringValue.flatMap(TargetType.init(rawValue:)), let value = t["value"]?.stringValue else {
                            failure = Failure(reason: "output line \(lineNumber) names a coverage target without type and value")
                            break
                        }
                        target = Target(type: type, value: value, port: t["port"].flatMap { if case .number(let n) = $0, n == n.rounded(), abs(n) < 1e6 { Int(n) } else { nil } },
                                        at: t["at"]?.stringValue, platform: t["platform"]?.stringValue)
                    }
                    coverage(target, covered)
                    continue
                }
                guard case .object(let record)? = try? JSONParser.parse(line),
                      let cat = record["category"]?.stringValue.flatMap(DataCategory.init(rawValue:)),
                      let t = record["target"], let type = t["type"]?.stringValue.flatMap(TargetType.init(rawValue:)),
                      let value = t["value"]?.stringValue
                else {
                    failure = Failure(reason: "output line \(lineNumber) is not a record object with category and target")
                    break
                }
                // The target object as the request gives it (with its port, time or platform, if any).
                let target = Target(type: type, value: value, port: t["port"].flatMap { if case .number(let n) = $0, n == n.rounded(), abs(n) < 1e6 { Int(n) } else { nil } },
                                    at: t["at"]?.stringValue, platform: t["platform"]?.stringValue)
                guard cat == category, targets.contains(target) else { outOfScope += 1; continue }
                try pending.withUnsafeBytes { try sink(target, UnsafeRawBufferPointer(rebasing: $0[line.startIndex..<line.endIndex])) }
            }
            pending.removeFirst(start)
        }
        process.waitUntilExit()
        if stopper.stopped { throw Failure(reason: "stopped: the request was cancelled") }
        if let failure { throw failure }
        if !pending.isEmpty && !pending.allSatisfy({ $0 == 0x20 || $0 == 0x0D }) {
            throw Failure(reason: "output does not end with a newline")
        }
        guard process.terminationReason == .exit, process.terminationStatus == 0 else {
            let how = process.terminationReason == .exit ? "exited with status \(process.terminationStatus)" : "was stopped (signal \(process.terminationStatus)), possibly by its time-out"
            throw Failure(reason: "program \(how); its stderr is in the job directory")
        }
        return Output(outOfScope: outOfScope)
    }

    /// A coverage declaration's value, when its times are RFC 3339 UTC.
    static func coverage(_ value: JSONValue) -> Manifest.Coverage? {
        guard let c = try? JSONDecoder().decode(Manifest.Coverage.self, from: Data(CanonicalJSON.serialize(value))),
              [c.from, c.to].allSatisfy({ Timestamp.parse($0) != nil }), c.retainedSince.map({ Timestamp.parse($0) != nil }) ?? true,
              (c.gaps ?? []).allSatisfy({ Timestamp.parse($0.from) != nil && Timestamp.parse($0.to) != nil })
        else { return nil }
        return c
    }

    /// A bare program name is looked up on PATH, as a shell would.
    static func resolve(_ program: String) -> String? {
        if program.contains("/") { return FileManager.default.isExecutableFile(atPath: program) ? program : nil }
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin").split(separator: ":") {
            let path = "\(dir)/\(program)"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }
}
