import CustosTestSupport
import Foundation

/// Writes the package test vectors: `valid/` (bundles that verify), `invalid/` (one bundle per
/// defect, named after it, with `EXPECTED.json` mapping each to the failure it must raise) and
/// `trust/` (the CA certificates to verify them with; no private key is written).
/// Usage: custos-vectors [DIRECTORY]   (default: schemas/package/vectors)
///        custos-vectors --large MIB FILE TRUSTDIR [--judged]   (one valid bundle of MIB MiB of CDR-like records, for ops/bench
///                                                       and ops/test; --judged: with the broker's verdict, criteria.json)
///        custos-vectors --custody [DIRECTORY]      (Merkle proof vectors; default: schemas/custody/vectors)
if CommandLine.arguments.dropFirst().first == "--large" {
    var args = Array(CommandLine.arguments.dropFirst(2))
    let judged = args.last == "--judged"
    if judged { args.removeLast() }
    guard args.count == 3, let mib = Int(args[0]), mib > 0 else {
        FileHandle.standardError.write(Data("usage: custos-vectors --large MIB FILE TRUSTDIR [--judged]\n".utf8))
        exit(2)
    }
    try LargeBundle.write(mebibytes: mib, to: args[1], trustDirectory: args[2], judged: judged)
    exit(0)
}
if CommandLine.arguments.dropFirst().first == "--custody" {
    let dir = URL(fileURLWithPath: CommandLine.arguments.dropFirst(2).first ?? "schemas/custody/vectors")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    try Data(MerkleVectors.json(MerkleVectors.inclusion())).write(to: dir.appendingPathComponent("inclusion.json"))
    try Data(MerkleVectors.json(MerkleVectors.consistency())).write(to: dir.appendingPathComponent("consistency.json"))
    print("wrote inclusion.json and consistency.json to \(dir.path)")
    exit(0)
}
let root = URL(fileURLWithPath: CommandLine.arguments.dropFirst().first ?? "schemas/package/vectors")
let fm = FileManager.default
for dir in ["valid", "invalid", "trust"] {
    try? fm.removeItem(at: root.appendingPathComponent(dir))
    try fm.createDirectory(at: root.appendingPathComponent(dir), withIntermediateDirectories: true)
}
// Long-lived CAs, so the vectors keep verifying for decades.
let factory = try BundleFactory(caYears: 50)
func write(_ path: String, _ bytes: [UInt8]) throws { try Data(bytes).write(to: root.appendingPathComponent(path)) }
try write("trust/provider-ca.pem", Array(factory.pki.providerCA.utf8))
try write("trust/tsa-ca.pem", Array(factory.pki.tsaCA.utf8))
try write("trust/custody-ca.pem", Array(factory.pki.custodyCA.utf8))
try write("trust/witnesses.pem", Array(factory.pki.witnessCertificate.utf8))
try write("valid/standard.tar", try factory.bundle(.standard))
try write("valid/cannot-execute.tar", try factory.bundle(.withCannotExecute))
var expected: [String: String] = [:]
for defect in BundleFactory.Defect.allCases {
    try write("invalid/\(defect.rawValue).tar", try factory.bundle(.standard, defect: defect))
    expected[defect.rawValue] = defect.expected.rawValue
}
let encoder = JSONEncoder()
encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
try write("invalid/EXPECTED.json", Array(try encoder.encode(expected)) + [0x0A])
print("wrote \(2 + BundleFactory.Defect.allCases.count) bundles and the trust anchors to \(root.path)")
