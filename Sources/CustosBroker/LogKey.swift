/// Logging metadata keys, in one place. None of them ever carries a target identifier or
/// payload bytes.
enum LogKey {
    static let request = "custos.request_id"
    static let package = "custos.package_id"
    static let provider = "custos.provider_id"
    static let outcome = "custos.outcome"
    static let reason = "custos.reason"
    static let topic = "kafka.topic"
    static let partition = "kafka.partition"
    static let offset = "kafka.offset"
    static let error = "error"
}
