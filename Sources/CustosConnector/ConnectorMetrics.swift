import Foundation
import Hummingbird
import Logging
import Metrics
import Prometheus
import ServiceLifecycle

/// The connector's metrics (swift-metrics; `custos-connector run` exports them for
/// Prometheus). Labels name phases, adapters and reasons — never a target or a record.
struct ConnectorMetrics: Sendable {
    let requests = Metrics.Counter(label: "custos_connector_requests_total")
    let packagesSent = Metrics.Counter(label: "custos_connector_packages_sent_total")
    let refusals = Metrics.Counter(label: "custos_connector_refusals_total")
    let recordsExtracted = Metrics.Counter(label: "custos_connector_records_extracted_total")
    let chunksSent = Metrics.Counter(label: "custos_connector_chunks_sent_total")
    let bytesSent = Metrics.Counter(label: "custos_connector_bytes_sent_total")
    let jobFailures = Metrics.Counter(label: "custos_connector_job_failures_total")
    /// Messages the broker answered with a message receipt: it could not apply them.
    let messagesNotApplied = Metrics.Counter(label: "custos_connector_messages_not_applied_total")
    /// `resend` messages received: the broker lacked chunks after a package's manifest.
    let resendsReceived = Metrics.Counter(label: "custos_connector_resends_received_total")
    /// Chunks sent again because the broker asked for them.
    let chunksResent = Metrics.Counter(label: "custos_connector_chunks_resent_total")
    /// Manifests sent again because no receipt came within `receipts.timeoutSeconds`.
    let manifestsResent = Metrics.Counter(label: "custos_connector_manifests_resent_total")
    /// Packages sent whose receipt has not come yet (their content is kept).
    let awaitingReceipt = Metrics.Gauge(label: "custos_connector_packages_awaiting_receipt")
    /// Packages whose content was deleted at `receipts.retentionDays` without a receipt.
    let contentExpired = Metrics.Counter(label: "custos_connector_content_expired_total")
    let inFlight = Metrics.Gauge(label: "custos_connector_jobs_in_flight")
    let extractionSeconds = Metrics.Timer(label: "custos_connector_extraction_seconds", preferredDisplayUnit: .seconds)

    func outOfScope(_ reason: RecordGate.Drop) -> Metrics.Counter {
        Metrics.Counter(label: "custos_connector_records_out_of_scope_total", dimensions: [("reason", reason.rawValue)])
    }

    func adapterFailure(_ kind: String) -> Metrics.Counter {
        Metrics.Counter(label: "custos_connector_adapter_failures_total", dimensions: [("adapter", kind)])
    }
}

/// `http.address` (e.g. `127.0.0.1:9464`): the operator's endpoint. `GET /metrics` is the
/// Prometheus text format; `GET /health` answers 200 `{"status":"ok",…}` while the connector
/// runs and its state directory takes writes, 503 `{"status":"unhealthy",…}` otherwise, with
/// the jobs by phase.
public struct ConnectorHTTP: Service {
    let host: String
    let port: Int
    let registry: PrometheusCollectorRegistry
    let jobs: JobStore
    let logger: Logger

    public init(address: String, registry: PrometheusCollectorRegistry, jobs: JobStore, logger: Logger) throws {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]), (0...65535).contains(port) else {
            throw ConnectorError(reason: "http.address must be HOST:PORT, e.g. 127.0.0.1:9464")
        }
        host = String(address[..<colon])
        self.port = port
        self.registry = registry
        self.jobs = jobs
        self.logger = logger
    }

    public static func router(registry: PrometheusCollectorRegistry, jobs: JobStore) -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/metrics") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                     body: ResponseBody(byteBuffer: ByteBuffer(bytes: registry.emitToBuffer())))
        }
        router.get("/health") { _, _ in
            var phases: [String: Int] = [:]
            for id in jobs.jobs() { phases[jobs.phase(id).rawValue, default: 0] += 1 }
            let writable = jobs.isWritable()
            let body: [String: Any] = ["status": writable ? "ok" : "unhealthy", "stateDirectoryWritable": writable, "jobs": phases]
            let data = (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])) ?? Data()
            return Response(status: writable ? .ok : .serviceUnavailable, headers: [.contentType: "application/json"],
                            body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
        }
        return router
    }

    public func run() async throws {
        let host = self.host
        let app = Application(router: Self.router(registry: registry, jobs: jobs), configuration: .init(address: .hostname(host, port: port)),
                              onServerRunning: { channel in
                                  // Port 0 picks a free one: the line says which.
                                  print("custos-connector metrics and health on http://\(host):\(channel.localAddress?.port ?? 0)")
                                  fflush(nil)
                              },
                              logger: logger)
        try await app.runService()
    }
}
