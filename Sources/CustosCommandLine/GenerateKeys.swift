import ArgumentParser
import CustosEvidence

/// `keys generate`, shared by `custos-broker` and `custos-connector`.
public struct KeysCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(commandName: "keys", abstract: "Manage signing keys.", subcommands: [Generate.self])
    public init() {}

    public struct Generate: ParsableCommand {
        public static let configuration = CommandConfiguration(abstract: "Write a new P-256 key pair as PEM files (private key mode 0600).")
        @Option(help: "Where to write the private key.") var privateKey: String
        @Option(help: "Where to write the public key.") var publicKey: String
        public init() {}

        public func run() throws {
            try SigningKey.generate().write(privatePath: privateKey, publicPath: publicKey)
            print("wrote \(privateKey) and \(publicKey)")
        }
    }
}
