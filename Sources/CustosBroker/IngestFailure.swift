import CustosEvidence
import PostgresNIO
import _ConnectionPoolModule

/// Why a provider's message could not be applied: because of the message, because of the
/// database (or the chunk store), or for a reason nobody foresaw. The first kind is
/// dead-lettered at once, with its reason, and the consumer moves on; the second is retried,
/// the same message, for as long as it takes — the evidence is valid, the store is not ready;
/// the third is retried a few times (`ResponseIngestor.unforeseenAttempts`), then dead-lettered
/// with its error's type, so that it cannot stall its request for good.
enum IngestFailure: Equatable {
    /// The message cannot be applied as it is (the reason names no value it holds).
    case message(String)
    /// The database or the chunk store failed; the same message is tried again.
    case database
    /// An error of a kind not classified here (its type's name).
    case unforeseen(String)

    /// SQLSTATE classes (PostgreSQL Appendix A) that say the statement's values, which come from
    /// the message, are at fault: a data exception (22: a value out of range, invalid text), an
    /// integrity constraint violation (23), a program limit exceeded (54: a value too large for
    /// an index). Every other class is the database's: a connection lost (08), a transaction
    /// rolled back by a serialization failure or deadlock (40), resources exhausted (53), a lock
    /// not available (55), an administrator's shutdown (57), an I/O error (58), a read-only
    /// standby after a failover (25), a schema not yet migrated or a grant revoked (42), and the
    /// rest: retried, never dead-lettered.
    static let messageClasses: Set<String> = ["22", "23", "54"]

    /// Classifies `error` thrown while applying a message.
    static func cause(of error: any Error) -> IngestFailure {
        switch error {
        case let e as IngestRejection:
            return .message(e.reason)
        case let e as SignedEnvelope.DecodeError:
            return .message(e.description)
        case is DecodingError:
            return .message("malformed: the message body does not decode")
        case let e as PostgresTransactionError:
            // BEGIN, COMMIT or ROLLBACK failed: the connection, not the message.
            if e.beginError != nil || e.commitError != nil || e.rollbackError != nil { return .database }
            return e.closureError.map(cause(of:)) ?? .database
        case let e as PSQLError:
            guard let state = e.serverInfo?[.sqlState], state.count == 5 else { return .database }  // no server answer: the connection
            return messageClasses.contains(String(state.prefix(2))) ? .message("the database refused a value of the message (SQLSTATE \(state))") : .database
        case let e as BrokerError:
            if e.code == .storageFailure || e.code == .unavailable { return .database }
            return .message(e.description)
        case is ChunkStoreError, is ConnectionPoolError:
            return .database
        case is CancellationError:
            return .database
        default:
            return .unforeseen(String(describing: type(of: error)))
        }
    }
}
