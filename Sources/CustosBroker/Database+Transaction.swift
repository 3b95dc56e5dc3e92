import Logging
import PostgresNIO

extension PostgresClient {
    /// `withTransaction`, rethrowing the closure's own error as it was thrown: PostgresNIO wraps
    /// it in `PostgresTransactionError`, which would turn a refusal (403, 409, a dead letter)
    /// into an internal error. Failures of BEGIN, COMMIT or ROLLBACK stay wrapped.
    public func transaction<Result: Sendable>(
        logger: Logger, file: String = #file, line: Int = #line,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (PostgresConnection) async throws -> sending Result
    ) async throws -> sending Result {
        do {
            return try await withTransaction(logger: logger, file: file, line: line, isolation: isolation, body)
        } catch let e as PostgresTransactionError {
            if let inner = e.closureError, e.rollbackError == nil { throw inner }
            throw e
        }
    }
}
