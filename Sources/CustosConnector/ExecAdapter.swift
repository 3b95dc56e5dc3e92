import CustosCanonicalJSON
import CustosModel
import Foundation
import Synchronization

/// Runs an extraction program: it gets `{"category": …, "request": …}` as JSON on stdin and
/// writes records on stdout, as JSON lines or CSV (`AdapterOutput`). Records are put in
/// canonical form; those outside the request's targets, category or window are not sent, only
/// counted (`RecordGate`). A line `{"coverage": {"from", "to", "retainedSince"?, "gaps"?},
/// "target"?: …}` declares what the records cover (for one target, or without `target` for
/// all): it goes into the manifest's results, for the four criteria's đủ. Its stderr goes to a
/// file in the job directory (it may name targets, so it is never logged).
public struct ExecAdapter: Sendable {
    public var command: [String]
    public var timeout: Duration
    public var normalisation: RecordGate.Settings

    public init(command: [String], timeout: Duration, normalisation: RecordGate.Settings = .init()) {
        self.command = command
        self.timeout = timeout
        self.normalisation = normalisation
    }

    public struct Failure: Error, CustomStringConvertible, Sendable {
        public var reason: String
        public var description: String { "adapter: \(reason)" }
    }

    public struct Output: Sendable {
        /// Records not sent, by reason (outside the request's targets, category or window, or
        /// unreadable).
        public var dropped: [RecordGate.Drop: Int]
        /// The line (or row) numbers of the first unreadable records, at most
        /// `AdapterOutput.unreadableLinesKept`, for the operator (never their content).
        public var unreadableLines: [Int] = []
        /// The unreadable records, by where they belong and why: what the manifest's
        /// `notSent` says (package SPEC §3).
        public var notSent: [NotSentKey: Int] = [:]
        public var outOfScope: Int { dropped.values.reduce(0, +) }

        public init(dropped: [RecordGate.Drop: Int], unreadableLines: [Int] = [], notSent: [NotSentKey: Int] = [:]) {
            self.dropped = dropped
            self.unreadableLines = unreadableLines
            self.notSent = notSent
        }
    }

    /// Where records not sent belong: a result (`target` and `category`), a category, or
    /// nothing that could be read.
    public struct NotSentKey: Hashable, Codable, Sendable {
        public var reason: Manifest.NotSent.Reason
        public var category: DataCategory?
        public var target: Target?
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

    /// How a program is started so that it gets SIGPIPE's default action. SwiftNIO ignores
    /// SIGPIPE in the whole process once it opens a socket (Linux has no per-socket switch),
    /// and an ignored signal stays ignored across exec, where not even a shell can reset it:
    /// `zcat big.gz | head` would then fail with "Broken pipe" instead of ending quietly. GNU
    /// env's `--default-signal=PIPE` (coreutils ≥ 8.31) resets it before it execs the program.
    /// Empty when this system's env lacks the option (the program then inherits the ignore).
    static let defaultSignals: [String] = {
        let probe = Process()
        probe.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        probe.arguments = ["--default-signal=PIPE", "/bin/true"]
        probe.standardOutput = FileHandle.nullDevice
        probe.standardError = FileHandle.nullDevice
        guard (try? probe.run()) != nil else { return [] }
        probe.waitUntilExit()
        return probe.terminationReason == .exit && probe.terminationStatus == 0 ? ["/usr/bin/env", "--default-signal=PIPE"] : []
    }()

    /// `process` set to run `executable` with `arguments`, through `defaultSignals`.
    static func configure(_ process: Process, executable: String, arguments: [String]) {
        let launch = defaultSignals + [executable] + arguments
        process.executableURL = URL(fileURLWithPath: launch[0])
        process.arguments = Array(launch.dropFirst())
    }

    /// Writes `input` to a program's stdin and closes it, on a thread of its own that blocks
    /// SIGPIPE: writing to a program that exited without reading its input (`cat export.csv`)
    /// is then an `EPIPE` error, ignored, instead of SIGPIPE, whose default action ends the
    /// whole connector without a word. The signal is raised on the writing thread (Linux
    /// directs it there), stays pending while blocked and is dropped when the thread ends.
    /// Only this thread blocks it, so the programs the connector starts (from other threads)
    /// keep SIGPIPE's default action: `zcat … | head` in an adapter still ends quietly.
    /// `done` is called once the input is written (or refused) and closed.
    static func feed(_ input: [UInt8], to handle: FileHandle, done: @escaping @Sendable () -> Void = {}) {
        let thread = Thread {
            var pipeSignal = sigset_t()
            sigemptyset(&pipeSignal)
            sigaddset(&pipeSignal, SIGPIPE)
            pthread_sigmask(SIG_BLOCK, &pipeSignal, nil)
            try? handle.write(contentsOf: input)
            try? handle.close()
            done()
        }
        thread.name = "custos-adapter-input"
        thread.start()
    }

    /// Stops a running program on cancellation, or one about to start.
    final class Stopper: Sendable {
        private let state = Mutex<(pid: Int32?, stopped: Bool, finished: Bool)>((nil, false, false))
        /// How long a stopped program has after SIGTERM before SIGKILL.
        static let grace: Duration = .seconds(3)

        func stop() {
            let pid = state.withLock { s -> Int32? in s.stopped = true; return s.pid }
            if let pid { terminate(pid) }
        }

        /// Records the started program; false when a stop came first (it is stopped at once).
        func started(_ pid: Int32) -> Bool {
            let stopped = state.withLock { s -> Bool in s.pid = pid; return s.stopped }
            if stopped { terminate(pid) }
            return !stopped
        }

        /// The program's output is read to its end and the program reaped.
        func finished() { state.withLock { $0.finished = true } }

        /// SIGTERM to the program's process group (Foundation starts each program as the
        /// leader of its own), so that a shell's children go too; SIGKILL after `grace` if
        /// its output is still open then (a program that ignores SIGTERM would otherwise keep
        /// the connector waiting).
        private func terminate(_ pid: Int32) {
            kill(-pid, SIGTERM)
            kill(pid, SIGTERM)
            DispatchQueue.global().asyncAfter(deadline: .now() + .seconds(Int(Self.grace.components.seconds))) {
                guard !self.state.withLock({ $0.finished }) else { return }
                kill(-pid, SIGKILL)
                kill(pid, SIGKILL)
            }
        }

        var stopped: Bool { state.withLock { $0.stopped } }
    }

    struct AdapterInput: Codable {
        var category: DataCategory
        var request: ApprovedRequest
    }

    private func runBlocking(input: [UInt8], request: ApprovedRequest, category: DataCategory, sink: @escaping Sink, coverage: @escaping CoverageSink, stderrFile: URL,
                             stopper: Stopper) throws -> Output {
        guard let program = command.first, let executable = Self.resolve(program) else {
            throw Failure(reason: "program \(command.first ?? "(none)") not found")
        }
        let process = Process()
        Self.configure(process, executable: executable, arguments: Array(command.dropFirst()))
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
        Self.feed(input, to: stdin.fileHandleForWriting)

        var output = AdapterOutput(gate: RecordGate(request: request, category: category, settings: normalisation), category: category,
                                   sink: sink, coverage: coverage)
        var failure: Failure?
        let reader = stdout.fileHandleForReading
        while true {
            let data = reader.availableData
            if data.isEmpty { break }
            if failure != nil { continue }  // drain so the program can exit
            do { try output.consume(data) } catch {
                // The program is stopped; its output is drained so that it can exit.
                failure = (error as? Failure) ?? Failure(reason: "records could not be kept: \(error)")
                stopper.stop()
            }
        }
        process.waitUntilExit()
        stopper.finished()
        if let failure { throw failure }
        if stopper.stopped { throw Failure(reason: "stopped: the request was cancelled") }
        try output.finish()
        guard process.terminationReason == .exit, process.terminationStatus == 0 else {
            let how = process.terminationReason == .exit ? "exited with status \(process.terminationStatus)" : "was stopped (signal \(process.terminationStatus)), possibly by its time-out"
            throw Failure(reason: "program \(how); its stderr is in the job directory")
        }
        return Output(dropped: output.dropped, unreadableLines: output.unreadableLines, notSent: output.notSent)
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
