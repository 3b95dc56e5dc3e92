// swift-tools-version:6.2
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "custos",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "custos-broker", targets: ["custos-broker"]),
        .executable(name: "custos-connector", targets: ["custos-connector"]),
        .executable(name: "custos", targets: ["custos"]),
        .executable(name: "custos-synth", targets: ["custos-synth"]),
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-configuration.git", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/vapor/jwt-kit.git", from: "5.8.0"),
        .package(url: "https://github.com/hummingbird-project/swift-mustache.git", from: "2.1.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-auth.git", from: "2.5.0"),
        .package(url: "https://github.com/vapor/multipart-kit.git", from: "4.7.1"),
    ],
    targets: [
        // librdkafka >= 2.10.1, found through pkg-config (ops/install builds it when the system's is older).
        .systemLibrary(
            name: "CRdKafka",
            pkgConfig: "rdkafka",
            providers: [.apt(["librdkafka-dev"])]
        ),

        // OpenSSL 3 (libssl-dev) for CMS, RFC 3161 and X.509: the only C code of Custos' own.
        .target(
            name: "CCustosOpenSSL",
            linkerSettings: [.linkedLibrary("crypto")]
        ),

        // libphonenumber (libphonenumber-dev) for telephone numbers: C functions over the C++
        // library, so that no Swift module needs C++ interoperability.
        .target(
            name: "CCustosPhoneNumber",
            linkerSettings: [.linkedLibrary("phonenumber")]
        ),

        // Pure modules: no I/O, tested without services.
        .target(name: "CustosCanonicalJSON", swiftSettings: swiftSettings),
        .target(
            name: "CustosModel",
            dependencies: [
                "CustosCanonicalJSON", "CCustosPhoneNumber",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(name: "CustosPKI", dependencies: ["CCustosOpenSSL"], swiftSettings: swiftSettings),
        // The four criteria (đúng, đủ, sạch, sống): the verdict on a package, pure.
        .target(
            name: "CustosCriteria",
            dependencies: [
                "CustosModel", "CustosCanonicalJSON",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // RFC 9162 hashing, inclusion and consistency proofs, and the tile layout: no storage.
        .target(
            name: "CustosMerkle",
            dependencies: [.product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: swiftSettings
        ),
        // Custody events, checkpoints and the offline check of a bundle's custody proofs.
        .target(
            name: "CustosCustody",
            dependencies: [
                "CustosMerkle", "CustosModel", "CustosCanonicalJSON", "CustosPKI",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // ETSI TS 103 120 (HI-1): export, import and status of requests as XML.
        .target(
            name: "CustosETSI",
            dependencies: [
                "CustosModel",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // A C2SP tlog-witness (custos witness serve).
        .target(
            name: "CustosWitness",
            dependencies: [
                "CustosCustody",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CustosEvidence",
            dependencies: [
                "CustosModel", "CustosCanonicalJSON", "CustosPKI", "CustosMerkle", "CustosCustody", "CustosCriteria",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),

        // I/O modules.
        .target(
            name: "CustosKafka",
            dependencies: [
                "CRdKafka",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CustosRuntime",
            dependencies: [
                "CustosKafka",
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CustosBroker",
            dependencies: [
                "CustosModel", "CustosEvidence", "CustosKafka", "CustosRuntime", "CustosCanonicalJSON", "CustosPKI",
                "CustosMerkle", "CustosCustody", "CustosClient", "CustosCriteria", "CustosETSI",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                // Its pool's errors (a circuit breaker tripped) are told apart from the message's.
                .product(name: "_ConnectionPoolModule", package: "postgres-nio"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Crypto", package: "swift-crypto"),
                // The portal: its pages (templates), passwords (bcrypt) and second factor (RFC 6238 TOTP).
                .product(name: "Mustache", package: "swift-mustache"),
                .product(name: "HummingbirdBcrypt", package: "hummingbird-auth"),
                .product(name: "HummingbirdOTP", package: "hummingbird-auth"),
                .product(name: "MultipartKit", package: "multipart-kit"),
            ],
            // The portal's templates, message catalogs, style sheet and script.
            resources: [.copy("PortalResources")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CustosConnector",
            dependencies: [
                "CustosModel", "CustosEvidence", "CustosKafka", "CustosRuntime", "CustosCanonicalJSON", "CustosPKI", "CustosClient", "CustosCriteria",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "CustosClient",
            dependencies: [
                "CustosModel", "CustosEvidence", "CustosPKI", "CustosCanonicalJSON",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),

        .target(
            name: "CustosCommandLine",
            dependencies: ["CustosEvidence", "CustosPKI", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: swiftSettings
        ),

        // Executables.
        .executableTarget(
            name: "custos-broker",
            dependencies: [
                "CustosBroker", "CustosRuntime", "CustosCommandLine", "CustosCustody", "CustosMerkle", "CustosPKI", "CustosCanonicalJSON",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "custos-connector",
            dependencies: [
                "CustosConnector", "CustosRuntime", "CustosCommandLine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "custos",
            dependencies: [
                "CustosClient", "CustosModel", "CustosRuntime", "CustosEvidence", "CustosCustody", "CustosMerkle", "CustosPKI", "CustosCanonicalJSON",
                "CustosWitness",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "custos-synth",
            dependencies: [
                "CustosModel", "CustosCriteria",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),

        // Shared by the test targets: a throw-away PKI made at run time (no keys committed).
        .target(
            name: "CustosTestSupport",
            dependencies: ["CustosPKI", "CustosEvidence", "CustosModel", "CustosCanonicalJSON", "CustosMerkle", "CustosCustody"],
            swiftSettings: swiftSettings
        ),
        // Writes schemas/package/vectors/ (valid and invalid bundles, trust anchors).
        .executableTarget(
            name: "custos-vectors",
            dependencies: ["CustosTestSupport", "CustosPKI", "CustosCriteria", "CustosEvidence", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: swiftSettings
        ),

        // ops/bench custody: the custody log's throughput, latency, proof time and storage.
        .executableTarget(
            name: "custos-bench",
            dependencies: [
                "CustosBroker", "CustosCustody", "CustosEvidence", "CustosMerkle", "CustosModel", "CustosTestSupport",
                "CustosConnector", "CustosClient", "CustosKafka", "CustosRuntime", "CustosCriteria", "CustosCanonicalJSON",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Configuration", package: "swift-configuration"),
            ],
            swiftSettings: swiftSettings
        ),

        // Tests.
        .testTarget(
            name: "CustosUnitTests",
            dependencies: [
                "CustosCanonicalJSON", "CustosModel", "CustosEvidence", "CustosKafka", "CustosConnector", "CustosBroker", "CustosRuntime",
                "CustosPKI", "CustosTestSupport", "CustosMerkle", "CustosCustody", "CustosCriteria", "CustosWitness", "CustosETSI",
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "CustosIntegrationTests",
            dependencies: [
                "CustosBroker", "CustosCanonicalJSON", "CustosConnector", "CustosClient", "CustosKafka", "CustosModel", "CustosEvidence", "CustosRuntime",
                "CustosPKI", "CustosTestSupport", "CustosMerkle", "CustosCustody", "CustosWitness", "CustosETSI",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: swiftSettings
        ),
    ],
    cxxLanguageStandard: .cxx17
)
