import CustosClient
import Testing

/// The client's Server-Sent Events parser against WHATWG HTML §9.2.6's rules.
@Suite("Server-Sent Events parser")
struct ServerSentEventsTests {
    func parse(_ text: String, pieces: Int = 1) -> [ServerSentEvents.Event] {
        var parser = ServerSentEvents.Parser()
        let bytes = Array(text.utf8)
        let size = max(1, bytes.count / pieces)
        return stride(from: 0, to: bytes.count, by: size).flatMap { parser.consume(bytes[$0..<min($0 + size, bytes.count)]) }
    }

    @Test func fieldsLineEndsAndCommentsAsTheStandardSays() {
        let stream = "\u{FEFF}retry: 2000\r\n\r\n: keep-alive\n\nid: 7\nevent: request\ndata: {\"a\":1}\n\ndata:first\ndata: second\r\rid: 8\ndata\n\n"
        for pieces in [1, 3, 17, stream.utf8.count] {
            let events = parse(stream, pieces: pieces)
            #expect(events == [
                .init(id: "7", type: "request", data: "{\"a\":1}"),
                .init(id: "7", type: "message", data: "first\nsecond"),  // the last id stays; no event: message
                .init(id: "8", type: "message", data: ""),
            ], "in \(pieces) pieces")
        }
    }

    @Test func anEventWithoutDataOrUnfinishedIsNotDispatched() {
        #expect(parse("event: request\nid: 3\n\n").isEmpty)
        #expect(parse("data: half").isEmpty)  // no blank line yet
    }
}
