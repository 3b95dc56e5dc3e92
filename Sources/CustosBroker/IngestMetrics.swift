import CustosModel
import Metrics

/// The ingest's metrics (Prometheus names after the exporter's conversion), labelled by
/// provider id and lane only — never a target, a payload or free text:
/// - `custos_ingest_messages_total{provider, lane, outcome}`: messages applied, seen before
///   (`duplicate`) or dead-lettered;
/// - `custos_ingest_bytes_total{provider, lane}`: bytes read (value and headers);
/// - `custos_ingest_dead_letters_total{provider, lane, reason}`: by reason code (the reason's
///   first words, before any detail).
enum IngestMetrics {
    /// `custos.from.<provider>[.urgent]` → (provider, "urgent" | "normal").
    static func labels(topic: String) -> (provider: String, lane: String) {
        (Topics.provider(fromTopic: topic) ?? "other", topic.hasSuffix(".urgent") ? "urgent" : "normal")
    }

    static func read(topic: String, bytes: Int) {
        let (provider, lane) = labels(topic: topic)
        Counter(label: "custos_ingest_bytes_total", dimensions: [("provider", provider), ("lane", lane)]).increment(by: bytes)
    }

    static func applied(_ outcome: IngestOutcome, topic: String) {
        let (provider, lane) = labels(topic: topic)
        let name: String
        switch outcome {
        case .applied: name = "applied"
        case .duplicate: name = "duplicate"
        case .deadLettered(let reason):
            name = "dead-lettered"
            Counter(label: "custos_ingest_dead_letters_total", dimensions: [("provider", provider), ("lane", lane), ("reason", reasonCode(reason))]).increment()
        }
        Counter(label: "custos_ingest_messages_total", dimensions: [("provider", provider), ("lane", lane), ("outcome", name)]).increment()
    }

    /// A dead letter's reason as a label: its words before any `:` or `(`, lower case, at
    /// most 48 characters of `a-z`, `0-9` and `-` (reasons name fields, never values).
    static func reasonCode(_ reason: String) -> String {
        let head = reason.split(whereSeparator: { $0 == ":" || $0 == "(" }).first.map(String.init) ?? reason
        var code = ""
        for c in head.lowercased().unicodeScalars {
            if ("a"..."z").contains(c) || ("0"..."9").contains(c) { code.unicodeScalars.append(c) } else if !code.hasSuffix("-") { code += "-" }
        }
        while code.hasSuffix("-") { code.removeLast() }
        return String(code.prefix(48))
    }
}
