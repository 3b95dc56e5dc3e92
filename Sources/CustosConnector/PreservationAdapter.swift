import CustosCanonicalJSON
import CustosModel
import Foundation

/// Runs the provider's preservation program for a preservation order: it gets
/// `{"action": "preserve" | "extend" | "release", "request": …, "until": …}` as JSON on stdin
/// and freezes (or lets go of) the data the order names; exit status 0 means done. Its stdout
/// is ignored and its stderr goes to a file in the job directory (never logged).
public struct PreservationAdapter: Sendable {
    public enum Action: String, Codable, Sendable { case preserve, extend, release }

    public var command: [String]
    public var timeout: Duration

    public init(command: [String], timeout: Duration) {
        self.command = command
        self.timeout = timeout
    }

    struct Input: Codable {
        var action: Action
        var request: ApprovedRequest
        var until: String?
    }

    public func run(_ action: Action, request: ApprovedRequest, until: String?, stderrFile: URL) async throws {
        let input = try CanonicalJSON.encode(Input(action: action, request: request, until: until))
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            // A blocking wait: off the cooperative pool.
            let thread = Thread { continuation.resume(with: Result { try runBlocking(input: input, stderrFile: stderrFile) }) }
            thread.name = "custos-preservation-adapter"
            thread.start()
        }
    }

    private func runBlocking(input: [UInt8], stderrFile: URL) throws {
        guard let program = command.first, let executable = ExecAdapter.resolve(program) else {
            throw ExecAdapter.Failure(reason: "program \(command.first ?? "(none)") not found")
        }
        let process = Process()
        ExecAdapter.configure(process, executable: executable, arguments: Array(command.dropFirst()))
        let stdin = Pipe()
        _ = FileManager.default.createFile(atPath: stderrFile.path, contents: nil)
        process.standardInput = stdin
        process.standardOutput = FileHandle.nullDevice
        process.standardError = try FileHandle(forWritingTo: stderrFile)
        try process.run()
        let timer = DispatchSource.makeTimerSource()
        timer.schedule(deadline: .now() + .seconds(Int(timeout.components.seconds)))
        timer.setEventHandler { if process.isRunning { process.terminate() } }
        timer.resume()
        defer { timer.cancel() }
        let written = DispatchSemaphore(value: 0)
        ExecAdapter.feed(input, to: stdin.fileHandleForWriting) { written.signal() }
        written.wait()
        process.waitUntilExit()
        guard process.terminationReason == .exit, process.terminationStatus == 0 else {
            let how = process.terminationReason == .exit ? "exited with status \(process.terminationStatus)" : "was stopped, possibly by its time-out"
            throw ExecAdapter.Failure(reason: "preservation program \(how); its stderr is in the job directory")
        }
    }
}
