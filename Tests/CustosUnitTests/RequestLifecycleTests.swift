@testable import CustosBroker
import CustosModel
import Testing

/// The request life cycle as a table, with no I/O: who may move a request from which state
/// to which, what happens when they do, and that nothing moves a request back.
@Suite("Request life cycle")
struct RequestLifecycleTests {
    typealias L = RequestLifecycle

    @Test func theHappyPathsMoveOneStepAtATime() {
        // A request for data, from the author's draft to the broker's verdict.
        var state = RequestState.draft
        for (t, owner, expected) in [(L.Transition.submit, L.Owner.author, RequestState.submitted), (.approve, .approver, .approved),
                                     (.dispatch, .broker, .dispatched), (.acknowledge, .provider, .acknowledged), (.progress, .provider, .inProgress),
                                     (.deliverPart, .provider, .partiallyDelivered), (.deliver, .provider, .delivered), (.verify, .broker, .verified)] {
            guard case .move(let to, _) = L.decide(t, from: state, by: owner) else { Issue.record("\(t) from \(state) did not move"); return }
            #expect(to == expected, "\(t)")
            state = to
        }
        #expect(L.final.contains(.verified))
        // A preservation order: confirmed, then released by a person or ended by its clock.
        #expect(L.decide(.preserve, from: .acknowledged, by: .provider) == .move(to: .preserved, effects: [.recordEvent, .stopClocks]))
        #expect(L.decide(.release, from: .preserved, by: .investigator) == .move(to: .released, effects: [.recordEvent, .stopClocks, .sendPreservationRelease]))
        #expect(L.decide(.endPreservation, from: .preserved, by: .legalClock) == .move(to: .expired, effects: [.recordEvent, .stopClocks, .sendPreservationRelease]))
    }

    @Test func aPersonsActionFromAnotherStateIsRefusedWithTheReason() {
        #expect(L.decide(.submit, from: .submitted, by: .author) == .refuse(.wrongState(.submitted, expected: [.draft])))
        #expect(L.decide(.approve, from: .draft, by: .approver) == .refuse(.wrongState(.draft, expected: [.submitted])))
        #expect(L.decide(.approve, from: .approved, by: .dutyApprover).isRefusal)
        #expect(L.decide(.withdraw, from: .approved, by: .author).isRefusal)
        #expect(L.decide(.release, from: .expired, by: .investigator).isRefusal)
        #expect(L.Refusal.wrongState(.approved, expected: [.draft, .submitted]).reason == "request is approved, not draft or submitted")
    }

    @Test func onlyItsOwnersCauseATransition() {
        #expect(L.decide(.approve, from: .submitted, by: .author) == .refuse(.notOwner(.author)))
        #expect(L.decide(.reject, from: .submitted, by: .dutyApprover) == .refuse(.notOwner(.dutyApprover)))  // the fast track approves only
        #expect(L.decide(.acknowledge, from: .dispatched, by: .broker) == .refuse(.notOwner(.broker)))
        #expect(L.decide(.verify, from: .delivered, by: .provider) == .refuse(.notOwner(.provider)))  // a provider never judges its own package
        #expect(L.decide(.expire, from: .dispatched, by: .investigator) == .refuse(.notOwner(.investigator)))
        #expect(L.approver(for: .emergency) == .dutyApprover && L.approver(for: .normal) == .approver)
        for t in L.Transition.allCases {
            for owner in L.Owner.allCases {
                let decision = L.decide(t, from: L.rule(t).from.first!, by: owner)
                #expect(decision.isRefusal != L.rule(t).owners.contains(owner), "\(t) by \(owner)")
            }
        }
    }

    @Test func lateOrRepeatedMessagesNeverMoveARequestBack() {
        // Every message's or clock's transition, from every state it does not leave from, stays.
        for t in L.Transition.allCases where !L.rule(t).strict {
            let owner = L.rule(t).owners.first!
            for state in RequestState.allCases where !L.rule(t).from.contains(state) {
                #expect(L.decide(t, from: state, by: owner) == .stay, "\(t) from \(state)")
            }
        }
        #expect(L.decide(.acknowledge, from: .inProgress, by: .provider) == .stay)  // an ack after the first status
        #expect(L.decide(.refuse, from: .verified, by: .provider) == .stay)  // a refusal crossing the verdict
        #expect(L.decide(.expire, from: .delivered, by: .legalClock) == .stay)  // the clock after delivery
        #expect(L.decide(.revoke, from: .delivered, by: .reviewer) == .stay)  // delivered emergencies are sealed, not revoked
        // Along every transition, the states reachable from the target never include the source
        // (no cycles), except by staying.
        for t in L.Transition.allCases {
            for state in L.rule(t).from {
                #expect(!L.reachable(from: L.rule(t).to).contains(state), "\(t) from \(state) can come back")
            }
        }
    }

    @Test func endsAreFinalAndEveryStateIsReachable() {
        for state in RequestState.ended { #expect(L.final.contains(state), "\(state)") }
        #expect(L.final == RequestState.ended.union([.verified]))
        #expect(L.reachable(from: .draft) == Set(RequestState.allCases))
        #expect(L.sent == L.reachable(from: .approved))
        #expect(!L.sent.contains(.draft) && !L.sent.contains(.rejected) && !L.sent.contains(.withdrawn) && L.sent.contains(.expired))
    }

    @Test func effectsAgreeWithTheClocksAndMessages() {
        for t in L.Transition.allCases {
            let rule = L.rule(t)
            #expect(rule.effects.first == .recordEvent, "\(t) is on the timeline")
            #expect(rule.effects.contains(.stopClocks) == !L.clocksStopped(by: t).isEmpty, "\(t)")
            // People act on the API and are refused; messages and clocks are idempotent.
            #expect(rule.strict == !rule.owners.isDisjoint(with: [.author, .investigator, .approver, .dutyApprover]), "\(t)")
        }
        #expect(L.rule(.approve).effects == [.recordEvent, .startClocks, .sendRequest])
        #expect(L.rule(.revoke).effects.contains(.sealPackages) && L.rule(.revoke).effects.contains(.sendRevocation))
        #expect(L.clocksStopped(by: .acknowledge) == [.acknowledgement])
        #expect(L.clocksStopped(by: .deliver) == [.acknowledgement, .delivery])  // the review clock runs on after delivery
        #expect(Set(L.clocksStopped(by: .release)) == Set(LegalClock.Kind.allCases))
    }
}

extension RequestLifecycle.Decision {
    var isRefusal: Bool { if case .refuse = self { true } else { false } }
}
