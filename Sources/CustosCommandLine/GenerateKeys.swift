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
            let key = SigningKey.generate()
            try key.write(privatePath: privateKey, publicPath: publicKey)
            print("wrote \(privateKey) and \(publicKey)")
            // What the receiver of the public key confirms over a second channel (schemas/README.md).
            print("key id (SHA-256 of the public key's SubjectPublicKeyInfo): \(key.publicKey.keyId)")
        }
    }
}
