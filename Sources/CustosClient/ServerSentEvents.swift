/// Server-Sent Events, as WHATWG HTML §9.2.6 ("Interpreting an event stream") parses them.
///
/// Written here because the one Swift package for it available to this project
/// (mattt/EventSource 1.1.1) does not build on Linux: it needs `URLSession.bytes`, which
/// swift-corelibs-foundation lacks.
public enum ServerSentEvents {
    /// One dispatched event.
    public struct Event: Sendable, Equatable {
        /// The last event id seen (`id:`), as the stream set it; empty if none.
        public var id: String
        /// `event:`; `message` when absent.
        public var type: String
        /// The `data:` lines, joined with line feeds.
        public var data: String

        public init(id: String, type: String, data: String) {
            self.id = id
            self.type = type
            self.data = data
        }
    }

    /// Feeds bytes as they arrive (any split, CR, LF or CRLF line ends, UTF-8) and returns
    /// the events completed by them.
    public struct Parser: Sendable {
        var line: [UInt8] = []
        var afterCR = false
        var atStart = true
        var lastEventId = ""
        var type = ""
        var data = ""
        var hasData = false

        public init() {}

        public mutating func consume(_ bytes: some Sequence<UInt8>) -> [Event] {
            var out: [Event] = []
            for b in bytes {
                if afterCR {
                    afterCR = false
                    if b == 0x0A { continue }  // CRLF: one line end
                }
                if b == 0x0D || b == 0x0A {
                    afterCR = b == 0x0D
                    if let e = endLine() { out.append(e) }
                } else {
                    line.append(b)
                }
            }
            return out
        }

        mutating func endLine() -> Event? {
            defer { line.removeAll(keepingCapacity: true) }
            if atStart {
                atStart = false
                if line.starts(with: [0xEF, 0xBB, 0xBF]) { line.removeFirst(3) }  // a leading byte order mark is skipped
            }
            if line.isEmpty {
                // Dispatch: an event with no data line is dropped; the type resets either way.
                defer { type = ""; data = ""; hasData = false }
                guard hasData else { return nil }
                return Event(id: lastEventId, type: type.isEmpty ? "message" : type, data: data)
            }
            if line.first == 0x3A { return nil }  // ":" a comment
            let text = String(decoding: line, as: UTF8.self)
            let field: Substring, value: Substring
            if let colon = text.firstIndex(of: ":") {
                field = text[..<colon]
                var v = text[text.index(after: colon)...]
                if v.first == " " { v = v.dropFirst() }
                value = v
            } else {
                field = Substring(text)
                value = ""
            }
            switch field {
            case "event": type = String(value)
            case "data":
                data += (hasData ? "\n" : "") + value
                hasData = true
            case "id": if !value.contains("\0") { lastEventId = String(value) }
            default: break  // retry and unknown fields: ignored here
            }
            return nil
        }
    }
}
