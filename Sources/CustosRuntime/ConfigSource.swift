import Configuration
import CustosKafka
import Foundation
import Logging
import SystemPackage

/// Where settings come from, highest precedence first: `CUSTOS_*` environment variables
/// (`CUSTOS_DATABASE_URL` is `database.url`), then the JSON config file, then the defaults
/// declared next to each setting.
public enum ConfigSource {
    public static let environmentPrefix = "CUSTOS_"

    public static func reader(configFile: String?, environment: [String: String] = ProcessInfo.processInfo.environment) async throws -> ConfigReader {
        var scoped: [String: String] = [:]
        for (k, v) in environment where k.hasPrefix(environmentPrefix) {
            scoped[String(k.dropFirst(environmentPrefix.count))] = v
        }
        var providers: [any ConfigProvider] = [
            EnvironmentVariablesProvider(
                environmentVariables: scoped,
                secretsSpecifier: .dynamic { key, _ in key.contains("PASSWORD") || key.contains("URL") || key.contains("PROPERTIES") })
        ]
        if let configFile {
            guard FileManager.default.fileExists(atPath: configFile) else {
                throw ConfigurationError(key: "--config", reason: "file \(configFile) does not exist")
            }
            do {
                providers.append(try await FileProvider<JSONSnapshot>(filePath: FilePath(configFile)))
            } catch {
                throw ConfigurationError(key: "--config", reason: "\(configFile) is not a valid JSON config file")
            }
        }
        return ConfigReader(providers: providers)
    }
}

/// A setting that is missing or invalid. Names the key and the rule, never the value.
public struct ConfigurationError: Error, Sendable, CustomStringConvertible {
    public var key: String
    public var reason: String
    public init(key: String, reason: String) {
        self.key = key
        self.reason = reason
    }
    public var description: String { "configuration \(key): \(reason)" }
}

/// `postgres://user:password@host:port/database` taken apart (the password percent-decoded).
public struct PostgresURL: Sendable, Hashable {
    public var host: String
    public var port: Int
    public var username: String
    public var password: String?
    public var database: String

    /// `key` names the setting in the error.
    public init(_ url: String, key: String) throws {
        guard let c = URLComponents(string: url), c.scheme == "postgres" || c.scheme == "postgresql", let host = c.host, !host.isEmpty else {
            throw ConfigurationError(key: key, reason: "must be postgres://user:password@host:port/database")
        }
        self.host = host
        port = c.port ?? 5432
        username = c.user ?? "postgres"
        password = c.password?.removingPercentEncoding
        let db = c.path.trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        database = db.isEmpty ? username : db
    }
}

extension ConfigReader {
    /// A required string, with an error that names the key and its environment variable.
    public func require(_ key: String) throws -> String {
        guard let v = string(forKey: ConfigKey(key)), !v.isEmpty else {
            throw ConfigurationError(key: key, reason: "is required (config file key \"\(key)\" or environment \(Self.environmentName(key)))")
        }
        return v
    }

    /// A positive whole number of seconds, `value` when the key is not set.
    public func seconds(_ key: String, default value: Duration) throws -> Duration {
        let n = int(forKey: ConfigKey(key), default: Int(value.components.seconds))
        guard n > 0 else { throw ConfigurationError(key: key, reason: "must be a positive number of seconds") }
        return .seconds(n)
    }

    public static func environmentName(_ key: String) -> String {
        var out = ConfigSource.environmentPrefix
        var previousLower = false
        for c in key {
            if c == "." || c == "-" { out += "_"; previousLower = false; continue }
            if c.isUppercase && previousLower { out += "_" }
            out += c.uppercased()
            previousLower = c.isLowercase || c.isNumber
        }
        return out
    }

    /// Kafka settings under `kafka.`: `brokers` (bootstrap.servers), `clientId`,
    /// `properties`, a list of librdkafka `key=value` items passed through unchanged
    /// (SASL, TLS, timeouts...), and `groupStallSeconds` (0 to 86400, default 360; 0 turns
    /// the consumers' group-membership watchdog off).
    public func kafkaConfiguration(clientId: String) throws -> KafkaConfiguration {
        let brokers = try require("kafka.brokers")
        let properties = try KafkaConfiguration.parseProperties(stringArray(forKey: "kafka.properties", default: []))
        let stall = int(forKey: "kafka.groupStallSeconds", default: 360)
        guard (0...86_400).contains(stall) else {
            throw ConfigurationError(key: "kafka.groupStallSeconds", reason: "must be 0 to 86400 seconds")
        }
        return KafkaConfiguration(
            bootstrapServers: brokers, clientId: string(forKey: "kafka.clientId", default: clientId), properties: properties,
            groupStallSeconds: Int64(stall))
    }
}

public enum LogSetup {
    /// Bootstraps swift-log once per process, to standard error, at the configured level.
    public static func bootstrap(level: String?) -> Logger.Level {
        let lvl = level.flatMap(Logger.Level.init(rawValue:)) ?? .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = lvl
            return h
        }
        return lvl
    }
}
