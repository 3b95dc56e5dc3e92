import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

/// Where and how e-mail is sent (`notifications.smtp.*`).
public struct SMTPSettings: Sendable {
    public enum Security: String, Sendable {
        /// STARTTLS (RFC 3207) is required: a server that does not offer it is not used.
        case startTLS = "starttls"
        /// Plain text, for a relay on loopback only (the configuration refuses it elsewhere).
        case none
    }
    /// `notifications.smtp.host` and `.port` (default 587, submission).
    public var host: String
    public var port: Int = 587
    public var security: Security = .startTLS
    /// `notifications.smtp.username` and `.passwordFile`: AUTH PLAIN (RFC 4616), only over TLS.
    public var username: String?
    public var password: String?
    /// `notifications.smtp.from`: the envelope and header sender.
    public var from: String
    /// `notifications.smtp.caFile`: CA certificates (PEM) the server's certificate must chain
    /// to, when not a public one.
    public var trustRoots: [NIOSSLCertificate]?
    /// `notifications.smtp.timeoutSeconds`: one whole delivery.
    public var timeout: Duration = .seconds(30)

    public init(host: String, port: Int = 587, security: Security = .startTLS, from: String) {
        self.host = host
        self.port = port
        self.security = security
        self.from = from
    }
}

/// One e-mail: ASCII headers, a UTF-8 plain-text body.
public struct EMail: Sendable {
    public var to: String
    public var subject: String
    public var body: String
    /// `Message-ID`, without the angle brackets; the same on every retry, so that receivers
    /// can drop repeats.
    public var messageId: String

    public init(to: String, subject: String, body: String, messageId: String) {
        self.to = to
        self.subject = subject
        self.body = body
        self.messageId = messageId
    }

    /// The message as sent after DATA (RFC 5322), with CRLF line ends and dot-stuffing
    /// (RFC 5321 §4.5.2), without the final ".".
    func data(from: String, date: Date = Date()) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss '+0000'"
        let headers = [
            "From: \(from)", "To: \(to)", "Subject: \(subject)", "Date: \(formatter.string(from: date))", "Message-ID: <\(messageId)>",
            "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit", "Auto-Submitted: auto-generated",
        ]
        let lines = body.split(separator: "\n", omittingEmptySubsequences: false).map { $0.hasPrefix(".") ? "." + $0 : String($0) }
        return (headers + [""] + lines).joined(separator: "\r\n") + "\r\n"
    }
}

/// Why a delivery failed: the server's reply code (4xx: try again later; 5xx: refused), or a
/// connection, TLS or time-out failure. Never quotes the message or the server's words (they
/// may echo an address).
public struct SMTPError: Error, CustomStringConvertible, Sendable {
    public var code: Int?
    public var stage: String
    public var detail: String
    public var description: String { "SMTP \(stage): " + (code.map { "\($0) " } ?? "") + detail }
    /// Whether trying again later may succeed (a 4xx reply, or no reply at all).
    public var isTransient: Bool { code.map { (400..<500).contains($0) } ?? true }
}

/// A minimal SMTP submission client (RFC 5321, STARTTLS RFC 3207, AUTH PLAIN RFC 4616) on
/// SwiftNIO: one connection per message. Written here because no Swift SMTP library is
/// available to this project.
public enum SMTPClient {
    /// Sends `mail`; throws `SMTPError`.
    public static func send(_ mail: EMail, settings: SMTPSettings, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws {
        let connection = Connection()
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await deliver(mail, settings: settings, group: group, connection: connection) }
            tasks.addTask {
                try await Task.sleep(for: settings.timeout)
                // Closing the connection fails whatever waits on it, so the delivery ends too.
                connection.close()
                throw SMTPError(code: nil, stage: "timeout", detail: "no answer within \(settings.timeout)")
            }
            defer { tasks.cancelAll() }
            try await tasks.next()
        }
    }

    /// The delivery's channel, once connected, so that a time-out can close it.
    final class Connection: Sendable {
        private let state = Mutex<(channel: (any Channel)?, closed: Bool)>((nil, false))
        func set(_ c: any Channel) {
            if state.withLock({ s -> Bool in s.channel = c; return s.closed }) { c.close(promise: nil) }
        }
        func close() {
            state.withLock { s -> (any Channel)? in s.closed = true; return s.channel }?.close(promise: nil)
        }
    }

    static func deliver(_ mail: EMail, settings: SMTPSettings, group: any EventLoopGroup, connection: Connection) async throws {
        let replies = ReplyHandler()
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: group)
                .channelOption(.socketOption(.so_reuseaddr), value: 1)
                .connectTimeout(.seconds(10))
                .channelInitializer { ch in
                    ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandlers([ByteToMessageHandler(LineDecoder()), replies]) }
                }
                .connect(host: settings.host, port: settings.port).get()
        } catch {
            throw SMTPError(code: nil, stage: "connect", detail: "\(settings.host):\(settings.port): \(type(of: error))")
        }
        connection.set(channel)
        defer { channel.close(promise: nil) }
        func expect(_ stage: String, _ ok: ClosedRange<Int>) async throws -> Reply {
            let reply = try await replies.next(on: channel.eventLoop).get()
            guard ok.contains(reply.code) else { throw SMTPError(code: reply.code, stage: stage, detail: "refused") }
            return reply
        }
        func command(_ line: String, _ stage: String, _ ok: ClosedRange<Int> = 250...250) async throws -> Reply {
            let reply = replies.next(on: channel.eventLoop)
            try await channel.writeAndFlush(ByteBuffer(string: line + "\r\n")).get()
            let r = try await reply.get()
            guard ok.contains(r.code) else { throw SMTPError(code: r.code, stage: stage, detail: "refused") }
            return r
        }
        _ = try await expect("greeting", 220...220)
        var hello = try await command("EHLO custos-broker", "EHLO")
        if settings.security == .startTLS {
            guard hello.lines.contains(where: { $0.uppercased().hasPrefix("STARTTLS") }) else {
                throw SMTPError(code: nil, stage: "STARTTLS", detail: "the server does not offer STARTTLS, which notifications.smtp.security requires")
            }
            _ = try await command("STARTTLS", "STARTTLS", 220...220)
            // Anything the server sent after its 220 came in plain text: a reply injected in
            // front of the TLS session (RFC 3207 §6). Refused.
            guard try await replies.isEmpty(on: channel.eventLoop).get() else {
                throw SMTPError(code: nil, stage: "STARTTLS", detail: "the server sent more after agreeing to STARTTLS")
            }
            var tls = TLSConfiguration.makeClientConfiguration()
            if let roots = settings.trustRoots { tls.trustRoots = .certificates(roots) }
            let context = try NIOSSLContext(configuration: tls)
            // An address names no host for SNI: the certificate is checked against the address itself.
            let hostname = settings.host.first?.isNumber == true || settings.host.contains(":") ? nil : settings.host
            try await channel.eventLoop.submit {
                try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: context, serverHostname: hostname), position: .first)
            }.get()
            hello = try await command("EHLO custos-broker", "EHLO after STARTTLS")
        }
        if let user = settings.username, let password = settings.password {
            guard settings.security == .startTLS else { throw SMTPError(code: nil, stage: "AUTH", detail: "credentials are sent only over TLS") }
            let token = Data(([0] + Array(user.utf8) + [0] + Array(password.utf8))).base64EncodedString()
            _ = try await command("AUTH PLAIN " + token, "AUTH", 235...235)
        }
        _ = try await command("MAIL FROM:<\(settings.from)>", "MAIL FROM")
        _ = try await command("RCPT TO:<\(mail.to)>", "RCPT TO", 250...251)
        _ = try await command("DATA", "DATA", 354...354)
        _ = try await command(mail.data(from: settings.from) + ".", "message")
        _ = try? await command("QUIT", "QUIT", 221...221)
    }

    /// Splits the stream into lines at LF (the CR, if any, stays for the reply parser).
    struct LineDecoder: ByteToMessageDecoder {
        typealias InboundOut = ByteBuffer
        mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
            guard let end = buffer.readableBytesView.firstIndex(of: 0x0A) else {
                guard buffer.readableBytes < 64 * 1024 else { throw SMTPError(code: nil, stage: "connection", detail: "a reply line over 64 KiB") }
                return .needMoreData
            }
            let line = buffer.readSlice(length: end - buffer.readerIndex)!
            buffer.moveReaderIndex(forwardBy: 1)
            context.fireChannelRead(wrapInboundOut(line))
            return .continue
        }
    }

    struct Reply: Sendable {
        var code: Int
        var lines: [String]
    }

    /// Collects multi-line replies (`250-…` … `250 …`) and hands each to the oldest waiter.
    final class ReplyHandler: ChannelInboundHandler, @unchecked Sendable {  // used on its channel's event loop only
        typealias InboundIn = ByteBuffer
        private var lines: [String] = []
        private var ready: [Reply] = []
        private var waiting: [EventLoopPromise<Reply>] = []
        private var failure: (any Error)?

        func next(on loop: any EventLoop) -> EventLoopFuture<Reply> {
            loop.flatSubmit {
                if !self.ready.isEmpty { return loop.makeSucceededFuture(self.ready.removeFirst()) }
                if let failure = self.failure { return loop.makeFailedFuture(failure) }
                let p = loop.makePromise(of: Reply.self)
                self.waiting.append(p)
                return p.futureResult
            }
        }

        /// Whether no reply, or part of one, waits to be taken.
        func isEmpty(on loop: any EventLoop) -> EventLoopFuture<Bool> {
            loop.submit { self.ready.isEmpty && self.lines.isEmpty }
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let text = String(buffer: unwrapInboundIn(data)).trimmingCharacters(in: CharacterSet(charactersIn: "\r"))
            let digits = text.prefix(3)
            guard digits.count == 3, let code = Int(digits) else { return }
            let rest = text.dropFirst(4)
            lines.append(String(rest))
            guard text.count == 3 || text.dropFirst(3).first == " " else { return }  // "250-": more lines follow
            let reply = Reply(code: code, lines: lines)
            lines = []
            if waiting.isEmpty { ready.append(reply) } else { waiting.removeFirst().succeed(reply) }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            fail(SMTPError(code: nil, stage: "connection", detail: "\(type(of: error))"))
            context.close(promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            fail(SMTPError(code: nil, stage: "connection", detail: "closed by the server"))
            context.fireChannelInactive()
        }

        private func fail(_ error: any Error) {
            failure = failure ?? error
            for p in waiting { p.fail(error) }
            waiting = []
        }
    }
}
