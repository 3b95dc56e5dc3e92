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

import PostgresNIO

/// An error as it may be logged: PostgreSQL's SQLSTATE and message (never its detail, which
/// can quote values), or the error's own description, which Custos keeps free of payload.
func loggable(_ error: any Error) -> String {
    if let e = error as? PSQLError {
        if let state = e.serverInfo?[.sqlState] { return "PostgreSQL SQLSTATE \(state): \(e.serverInfo?[.message] ?? "")" }
        return "PostgreSQL \(e.code)"
    }
    return String(describing: error)
}
