import CustosModel
import Foundation

/// An approved request for the adapters' tests: two numbers, CDRs, October 2026.
public enum SyntheticRequest {
    public static let spec = RequestSpec(caseId: UUID(), providerId: "prov-a",
                                         legalBasis: LegalBasis(decisionNumber: "QD-7/2026", issuingAuthority: "Test Authority", issuedOn: "2026-11-01"),
                                         targets: [Target(type: .msisdn, value: "+84912345678"), Target(type: .msisdn, value: "+84987654321")],
                                         categories: [.traffic], window: TimeWindow(from: "2026-10-01T00:00:00Z", to: "2026-11-01T00:00:00Z"))
    public static let approved = approve(spec)

    public static func approve(_ spec: RequestSpec) -> ApprovedRequest {
        ApprovedRequest(requestId: UUID(), spec: spec, submittedBy: "inv", approvedBy: "appr", approvedAt: "2026-11-19T00:00:00Z")
    }
}
