import PostgresNIO

/// Why a provider's message could not be applied: because of the message, or because of the
/// database. The first kind is dead-lettered at once, with its reason, and the consumer moves
/// on; only the second is retried, the same message again, since retrying the first would stall
/// its partition for good.
enum IngestFailure: Equatable {
    /// The message cannot be applied as it is (the reason names no value it holds).
    case message(String)
    /// The database (or the chunk store) failed; the same message is tried again.
    case database

    /// SQLSTATE classes (PostgreSQL Appendix A) that say the database, not the statement, is
    /// at fault: a connection lost (08), a transaction rolled back by a serialization failure or
    /// a deadlock (40), resources exhausted (53), a lock not available (55), an administrator's
    /// shutdown or a cancelled query (57), an I/O error (58), an internal error (XX).
    static let retriedClasses: Set<String> = ["08", "40", "53", "55", "57", "58", "XX"]

    /// Classifies `error` thrown while applying a message:
    /// - a PostgreSQL error with an SQLSTATE: by its class (`retriedClasses` are the database's;
    ///   any other — a data exception (22), an integrity violation (23), a program limit (54),
    ///   and the rest — is the message's);
    /// - a PostgreSQL error without one (the connection closed, a timeout, a pool shut down):
    ///   the database's;
    /// - a failure of the chunk store, or a service unavailable: the database's (retried);
    /// - a message that fails its checks (`IngestRejection`) or does not decode: the message's.
    static func cause(of error: any Error) -> IngestFailure {
        switch error {
        case let e as IngestRejection:
            return .message(e.reason)
        case let e as PSQLError:
            guard let state = e.serverInfo?[.sqlState], state.count == 5 else { return .database }
            let cls = String(state.prefix(2))
            return retriedClasses.contains(cls) ? .database : .message("the database refused a value of the message (SQLSTATE \(state))")
        case let e as BrokerError:
            if e.code == .storageFailure || e.code == .unavailable { return .database }
            return .message(e.description)
        case is DecodingError:
            return .message("malformed: the message body does not decode")
        case is CancellationError:
            return .database
        default:
            return .message("malformed: \(String(describing: type(of: error)))")
        }
    }
}
