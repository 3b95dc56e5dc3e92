import CustosBroker
import CustosConnector
import CustosModel
import Configuration
import CustosRuntime
import Foundation
import Testing

@Suite("Configuration")
struct ConfigurationTests {
    static let deploy = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("deploy")

    @Test func theBrokerExampleInDeployIsValid() async throws {
        let reader = try await ConfigSource.reader(configFile: Self.deploy.appendingPathComponent("broker.example.json").path, environment: [:])
        let c = try BrokerConfiguration(reader: reader)
        #expect(c.database.host == "db.internal" && c.database.requireTLS)
        #expect(c.kafka.properties["security.protocol"] == "SASL_SSL")
        #expect(c.httpPort == 8080)
        #expect(c.custodyOrigin == "custos.authority.internal/custody" && c.custodyCertificateFile == "/etc/custos/custody.pem")
        #expect(c.checkpointInterval == .seconds(1) && c.clocks.delivery == .seconds(864_000) && c.clocks.escalateAfter == .seconds(3600))
        #expect(c.webhooks.urls == ["https://duty-desk.authority.internal/custos-hooks"] && c.webhookSecretFile == "/etc/custos/webhook-secret")
        #expect(c.webhooks.events == Set(WebhookSettings.Event.allCases) && c.webhooks.maxAttempts == 12)
        #expect(c.ingestConcurrency == 4 && c.ingestUrgentConcurrency == 2 && c.ingestBufferBytes == 32 << 20)
    }

    @Test func ingestSettingsAreChecked() async throws {
        let file = Self.deploy.appendingPathComponent("broker.example.json").path
        for (env, named) in [(["CUSTOS_INGEST_CONCURRENCY": "0"], "ingest.concurrency"),
                             (["CUSTOS_INGEST_URGENT_CONCURRENCY": "-1"], "ingest.urgentConcurrency"),
                             (["CUSTOS_INGEST_BUFFER_BYTES": "1000"], "ingest.bufferBytes")] {
            let reader = try await ConfigSource.reader(configFile: file, environment: env)
            #expect(throws: ConfigurationError.self, "\(named)") { try BrokerConfiguration(reader: reader) }
            do { _ = try BrokerConfiguration(reader: reader) } catch let e as ConfigurationError { #expect(e.key == named) }
        }
    }

    @Test func webhookSettingsAreChecked() async throws {
        let file = Self.deploy.appendingPathComponent("broker.example.json").path
        for (env, named) in [(["CUSTOS_WEBHOOKS_URLS": "ftp://x/y"], "webhooks.urls"),
                             (["CUSTOS_WEBHOOKS_EVENTS": "clock.late,clock.sneezed"], "webhooks.events"),
                             (["CUSTOS_WEBHOOKS_MAX_ATTEMPTS": "0"], "webhooks.maxAttempts")] {
            let reader = try await ConfigSource.reader(configFile: file, environment: env)
            #expect { try BrokerConfiguration(reader: reader) } throws: { String(describing: $0).contains(named) }
        }
        let unsigned = try await ConfigSource.reader(configFile: nil, environment: [
            "CUSTOS_DATABASE_URL": "postgres://x@h/d", "CUSTOS_KAFKA_BROKERS": "k:9092", "CUSTOS_SIGNING_KEY_FILE": "/k", "CUSTOS_TSA_TRUST_FILE": "/t",
            "CUSTOS_STORAGE_DIRECTORY": "/s", "CUSTOS_STORAGE_KEY_FILE": "/sk",
            "CUSTOS_CUSTODY_CERTIFICATE_FILE": "/c", "CUSTOS_CUSTODY_KEY_FILE": "/k", "CUSTOS_CUSTODY_TSA_URL": "http://tsa",
            "CUSTOS_WEBHOOKS_URLS": "https://hooks.example/a"])
        #expect { try BrokerConfiguration(reader: unsigned) } throws: { String(describing: $0).contains("webhooks.secretFile") }
    }

    @Test func notificationSettingsAreChecked() async throws {
        let file = Self.deploy.appendingPathComponent("broker.example.json").path
        let host = ["CUSTOS_NOTIFICATIONS_SMTP_HOST": "mail.authority.example"]
        for (env, named) in [(host, "notifications.smtp.from"),  // a host needs a sender
                             (host.merging(["CUSTOS_NOTIFICATIONS_SMTP_FROM": "custos@x.example", "CUSTOS_NOTIFICATIONS_SMTP_SECURITY": "none"]) { $1 },
                              "notifications.smtp.security"),  // no TLS only on loopback
                             (host.merging(["CUSTOS_NOTIFICATIONS_SMTP_FROM": "custos@x.example", "CUSTOS_NOTIFICATIONS_SMTP_USERNAME": "u"]) { $1 },
                              "notifications.smtp.passwordFile"),
                             (["CUSTOS_NOTIFICATIONS_LINK": "portal.example"], "notifications.link")] {
            let reader = try await ConfigSource.reader(configFile: file, environment: env)
            #expect { try BrokerConfiguration(reader: reader) } throws: { String(describing: $0).contains(named) }
        }
        let reader = try await ConfigSource.reader(configFile: file, environment: [
            "CUSTOS_NOTIFICATIONS_SMTP_HOST": "127.0.0.1", "CUSTOS_NOTIFICATIONS_SMTP_PORT": "2525", "CUSTOS_NOTIFICATIONS_SMTP_FROM": "custos@x.example",
            "CUSTOS_NOTIFICATIONS_SMTP_SECURITY": "none", "CUSTOS_NOTIFICATIONS_LINK": "https://portal.example/"])
        let c = try BrokerConfiguration(reader: reader)
        #expect(c.email.smtp?.port == 2525 && c.email.smtp?.security == SMTPSettings.Security.none && c.email.link == "https://portal.example")
    }

    @Test func custodyAndClockSettingsAreChecked() async throws {
        let file = Self.deploy.appendingPathComponent("broker.example.json").path
        for (key, value, named) in [("CUSTOS_CUSTODY_ORIGIN", "has spaces", "custody.origin"),
                                    ("CUSTOS_CUSTODY_CHECKPOINT_MILLISECONDS", "0", "custody.checkpointMilliseconds"),
                                    ("CUSTOS_CLOCKS_DELIVERY_SECONDS", "-5", "clocks.deliverySeconds")] {
            let reader = try await ConfigSource.reader(configFile: file, environment: [key: value])
            #expect { try BrokerConfiguration(reader: reader) } throws: { String(describing: $0).contains(named) }
        }
        // Checkpoints need a TSA: the built-in one, or custody.tsaURL.
        let noTSA = try await ConfigSource.reader(configFile: nil, environment: [
            "CUSTOS_DATABASE_URL": "postgres://x@h/d", "CUSTOS_KAFKA_BROKERS": "k:9092", "CUSTOS_SIGNING_KEY_FILE": "/k", "CUSTOS_TSA_TRUST_FILE": "/t",
            "CUSTOS_STORAGE_DIRECTORY": "/s", "CUSTOS_STORAGE_KEY_FILE": "/sk",
            "CUSTOS_CUSTODY_CERTIFICATE_FILE": "/c", "CUSTOS_CUSTODY_KEY_FILE": "/k"])
        #expect { try BrokerConfiguration(reader: noTSA) } throws: { String(describing: $0).contains("custody.tsaURL") }
    }

    /// `adapters.<category>.retentionDays`: the coverage a CSV, SQL or file-drop export
    /// declares (they have no coverage line of their own).
    @Test func retentionDeclaresCoverage() {
        let window = TimeWindow(from: "2026-10-01T00:00:00Z", to: "2026-11-01T00:00:00Z")
        let asOf = Timestamp.parse("2026-11-30T00:00:00Z")!
        // Kept for two years: the whole window, the horizon before it.
        let whole = ConnectorConfiguration.coverage(window: window, asOf: asOf, retention: .seconds(730 * 86_400))
        #expect(whole == Manifest.Coverage(from: window.from, to: window.to, retainedSince: "2024-11-30T00:00:00.000Z"))
        // Kept for 45 days: from the horizon, inside the window (a declared retention gap).
        let partial = ConnectorConfiguration.coverage(window: window, asOf: asOf, retention: .seconds(45 * 86_400))
        #expect(partial?.from == "2026-10-16T00:00:00.000Z" && partial?.to == window.to && partial?.retainedSince == "2026-10-16T00:00:00.000Z")
        // Kept for ten days: nothing of the window is left.
        #expect(ConnectorConfiguration.coverage(window: window, asOf: asOf, retention: .seconds(10 * 86_400)) == nil)
        // A window that runs past the extraction is covered up to it.
        let open = TimeWindow(from: "2026-11-20T00:00:00Z", to: "2026-12-31T00:00:00Z")
        #expect(ConnectorConfiguration.coverage(window: open, asOf: asOf, retention: .seconds(730 * 86_400))?.to == "2026-11-30T00:00:00.000Z")
    }

    @Test func theConnectorExampleInDeployIsValid() async throws {
        let reader = try await ConfigSource.reader(configFile: Self.deploy.appendingPathComponent("connector.example.json").path, environment: [:])
        let c = try ConnectorConfiguration(reader: reader)
        #expect(c.providerId == "example-telco")
        #expect(c.adapters[.traffic] == .exec(["/opt/example-telco/bin/cdr-export", "--format", "jsonl"]))
        #expect(c.adapters[.location] == .exec(["/opt/example-telco/bin/extract-for-custos"]))  // the default
        if case .sql(let query)? = c.adapters[.subscriber] { #expect(query.contains("$1")) } else { Issue.record("subscriber is not the sql adapter") }
        #expect(c.adapters[.kycDocument] == .fileDrop)
        #expect(c.sqlDatabase?.database == "billing" && c.fileDropDirectory == "/srv/custos-drop")
        #expect(c.normalisation.defaultCountryCode == "84")
        #expect(c.kafka.properties["sasl.mechanisms"] == "SCRAM-SHA-512")
        #expect(c.preservationCommand == ["/opt/example-telco/bin/preserve-for-custos"])
        #expect(c.urgentFetchWaitMilliseconds == 10)
    }

    @Test func connectorAdapterMistakesAreNamedAtStart() async throws {
        let base = ["CUSTOS_PROVIDER_ID": "prov-a", "CUSTOS_KAFKA_BROKERS": "k:9092", "CUSTOS_SIGNING_KEY_FILE": "/k", "CUSTOS_CERTIFICATE_FILE": "/c",
                    "CUSTOS_TSA_URL": "http://t", "CUSTOS_TSA_TRUST_FILE": "/t", "CUSTOS_BROKER_PUBLIC_KEY_FILE": "/b", "CUSTOS_STATE_DIRECTORY": "/s"]
        func failure(_ extra: [String: String]) async throws -> String? {
            let reader = try await ConfigSource.reader(configFile: nil, environment: base.merging(extra) { _, b in b })
            do { _ = try ConnectorConfiguration(reader: reader); return nil } catch { return String(describing: error) }
        }
        #expect(try await failure([:])?.contains("configure adapters.default") == true)
        #expect(try await failure(["CUSTOS_ADAPTERS_TRAFFIC_SQL": "SELECT 1 AS time WHERE $1 = ''"])?.contains("adapters.sql.databaseURL") == true)
        #expect(try await failure(["CUSTOS_ADAPTERS_TRAFFIC_SQL": "SELECT $5", "CUSTOS_ADAPTERS_SQL_DATABASE_URL": "postgres://u@h/d"])?.contains("$5") == true)
        #expect(try await failure(["CUSTOS_ADAPTERS_TRAFFIC_FILE_DROP": "true"])?.contains("adapters.fileDrop.directory") == true)
        #expect(try await failure(["CUSTOS_ADAPTERS_TRAFFIC_FILE_DROP": "true", "CUSTOS_ADAPTERS_TRAFFIC_SQL": "SELECT 1",
                                   "CUSTOS_ADAPTERS_SQL_DATABASE_URL": "postgres://u@h/d", "CUSTOS_ADAPTERS_FILE_DROP_DIRECTORY": "/d"])?.contains("more than one") == true)
        #expect(try await failure(["CUSTOS_ADAPTERS_DEFAULT_COMMAND": "x", "CUSTOS_NORMALISATION_DEFAULT_COUNTRY_CODE": "084"])?.contains("country calling code") == true)
        #expect(try await failure(["CUSTOS_ADAPTERS_DEFAULT_COMMAND": "x"]) == nil)
    }

    @Test func theEnvironmentOverridesTheFile() async throws {
        let env = ["CUSTOS_DATABASE_URL": "postgres://x:y@other:1/z", "CUSTOS_HTTP_PORT": "9999", "CUSTOS_HTTP_MAX_BODY_BYTES": "123",
                   "CUSTOS_KAFKA_PROPERTIES": "security.protocol=SSL,ssl.ca.location=/x"]
        let reader = try await ConfigSource.reader(configFile: Self.deploy.appendingPathComponent("broker.example.json").path, environment: env)
        let c = try BrokerConfiguration(reader: reader)
        #expect(c.database.host == "other" && c.httpPort == 9999 && c.maxBodyBytes == 123)
        #expect(ConfigReader.environmentName("http.maxBodyBytes") == "CUSTOS_HTTP_MAX_BODY_BYTES")
        #expect(c.kafka.properties == ["security.protocol": "SSL", "ssl.ca.location": "/x"])
    }

    @Test func aMissingSettingNamesItsKeyAndVariable() async throws {
        let reader = try await ConfigSource.reader(configFile: nil, environment: ["CUSTOS_KAFKA_BROKERS": "k:9092"])
        #expect { try BrokerConfiguration(reader: reader) } throws: {
            String(describing: $0).contains("database.url") && String(describing: $0).contains("CUSTOS_DATABASE_URL")
        }
        let missing = try await ConfigSource.reader(configFile: nil, environment: [:])
        #expect { try ConnectorConfiguration(reader: missing) } throws: { String(describing: $0).contains("providerId") }
        await #expect { _ = try await ConfigSource.reader(configFile: "/nonexistent.json") } throws: {
            String(describing: $0).contains("does not exist")
        }
    }
}
