import CustosModel

/// The life cycle of a request, as one table: for each transition, the states it leaves
/// from, the state it reaches, who owns it, and the effects the store carries out in the same
/// transaction. A pure value, with no I/O: the store asks it, then writes what it says.
///
/// The states follow the life of an ETSI TS 103 120 LDTask (HI-1, §8.3 and Annex B): a
/// request is drafted and approved on the authority's side, sent to the provider (`CREATE`),
/// acknowledged, delivered in one or more deliveries (`DeliveryObject`s, the last with
/// `LastSequence`), and ends delivered, refused, expired, withdrawn or, for an emergency
/// that its review did not confirm, revoked (EU 2023/1543 Art. 9: the authority validates
/// an emergency order after the fact). A preservation order (EU 2023/1543 Art. 6) is
/// confirmed as preserved instead of delivered, and ends released or expired.
///
/// Two kinds of transition:
/// - a person's (`submit`, `withdraw`, `approve`, `reject`, `release`) is *strict*: from any
///   other state it is refused, and the person is told why (HTTP 409);
/// - a message's or a clock's (`dispatch`, the provider's, `verify`, `expire`, `revoke`,
///   `endPreservation`) is *idempotent*: from any other state it changes nothing, so a late
///   or repeated message never moves a request back.
public enum RequestLifecycle {
    /// A step in a request's life, named after what causes it.
    public enum Transition: String, Sendable, CaseIterable {
        /// The author sends the draft to the approvers.
        case submit
        /// The author takes back a request nobody has decided on.
        case withdraw
        /// An approver (a duty approver for an emergency) approves: the request is signed and sent.
        case approve
        /// An approver refuses the request.
        case reject
        /// The outbox relay has put the signed request on the provider's Kafka topic.
        case dispatch
        /// The provider's `ack`: it has the request, with the hash the broker approved.
        case acknowledge
        /// The provider's first `status` or its manifest: extraction is under way.
        case progress
        /// The provider's `refusal`, with its reason.
        case refuse
        /// A package judged complete on its own terms but declared partial: more follow.
        case deliverPart
        /// The last package is in and checked (the delivery clock stops).
        case deliver
        /// The broker judged the delivered evidence on all four criteria.
        case verify
        /// The provider's `preserved`: the data the order names is frozen.
        case preserve
        /// The delivery clock ran out, and the grace after it.
        case expire
        /// An emergency's reviewer revoked it, or nobody confirmed it inside its review clock,
        /// before it was delivered.
        case revoke
        /// An investigator ends a preservation order before its clock.
        case release
        /// A preservation order's clock reached its end.
        case endPreservation
    }

    /// Who may cause a transition.
    public enum Owner: String, Sendable, CaseIterable {
        /// The investigator who drafted the request, or a colleague its case is shared with.
        case author
        /// An investigator of the request's agency.
        case investigator
        /// An approver, other than the submitter (four eyes).
        case approver
        /// A duty approver: the fast track for emergencies, other than the submitter.
        case dutyApprover
        /// The approver who reviews an emergency after the fact.
        case reviewer
        /// The provider the request is addressed to, by a signed message.
        case provider
        /// The broker itself.
        case broker
        /// A legal clock, fired by the broker's watcher.
        case legalClock
    }

    /// What the store does, in the transition's transaction, once the request has moved.
    public enum Effect: String, Sendable, CaseIterable {
        /// A row on the request's timeline and a custody event.
        case recordEvent
        /// The request's legal clocks start (`LegalClock.start`).
        case startClocks
        /// The clocks that waited for this step stop (`clocksStopped(by:)`).
        case stopClocks
        /// The signed `request` message goes into the outbox.
        case sendRequest
        /// The signed `revocation` message goes into the outbox (urgent).
        case sendRevocation
        /// The signed `preservation-release` message goes into the outbox.
        case sendPreservationRelease
        /// The request's packages are sealed: kept, but not given out.
        case sealPackages
    }

    /// One row of the table.
    public struct Rule: Sendable, Equatable {
        /// The states the transition leaves from.
        public let from: Set<RequestState>
        /// The state it reaches.
        public let to: RequestState
        /// Who may cause it.
        public let owners: Set<Owner>
        /// What the store carries out when the request moves, in this order.
        public let effects: [Effect]
        /// Whether a transition from another state is refused (a person's action) rather than
        /// ignored (a message's or a clock's).
        public let strict: Bool
    }

    /// Before approval: the authority's side only.
    static let unsent: Set<RequestState> = [.draft, .submitted]
    /// From approval until the data is in, for a request for data.
    static let awaitingData: Set<RequestState> = [.approved, .dispatched, .acknowledged, .inProgress, .partiallyDelivered]
    /// A preservation order that still runs: it may be extended, released, or end by its clock.
    public static let preservationRunning: Set<RequestState> = [.approved, .dispatched, .acknowledged, .preserved]

    /// The table.
    public static func rule(_ transition: Transition) -> Rule {
        switch transition {
        case .submit:
            Rule(from: [.draft], to: .submitted, owners: [.author], effects: [.recordEvent], strict: true)
        case .withdraw:
            Rule(from: unsent, to: .withdrawn, owners: [.author], effects: [.recordEvent], strict: true)
        case .approve:
            Rule(from: [.submitted], to: .approved, owners: [.approver, .dutyApprover], effects: [.recordEvent, .startClocks, .sendRequest], strict: true)
        case .reject:
            Rule(from: [.submitted], to: .rejected, owners: [.approver], effects: [.recordEvent], strict: true)
        case .dispatch:
            Rule(from: [.approved], to: .dispatched, owners: [.broker], effects: [.recordEvent], strict: false)
        case .acknowledge:
            Rule(from: [.approved, .dispatched], to: .acknowledged, owners: [.provider], effects: [.recordEvent, .stopClocks], strict: false)
        case .progress:
            Rule(from: [.approved, .dispatched, .acknowledged], to: .inProgress, owners: [.provider], effects: [.recordEvent, .stopClocks], strict: false)
        case .refuse:
            Rule(from: awaitingData.union([.delivered]), to: .refused, owners: [.provider], effects: [.recordEvent, .stopClocks], strict: false)
        case .deliverPart:
            Rule(from: [.approved, .dispatched, .acknowledged, .inProgress], to: .partiallyDelivered, owners: [.provider],
                 effects: [.recordEvent, .stopClocks], strict: false)
        case .deliver:
            Rule(from: awaitingData, to: .delivered, owners: [.provider], effects: [.recordEvent, .stopClocks], strict: false)
        case .verify:
            Rule(from: [.delivered], to: .verified, owners: [.broker], effects: [.recordEvent, .stopClocks], strict: false)
        case .preserve:
            Rule(from: [.approved, .dispatched, .acknowledged], to: .preserved, owners: [.provider], effects: [.recordEvent, .stopClocks], strict: false)
        case .expire:
            Rule(from: awaitingData, to: .expired, owners: [.legalClock], effects: [.recordEvent, .stopClocks], strict: false)
        case .revoke:
            Rule(from: awaitingData, to: .revoked, owners: [.reviewer, .legalClock], effects: [.recordEvent, .stopClocks, .sealPackages, .sendRevocation],
                 strict: false)
        case .release:
            Rule(from: preservationRunning, to: .released, owners: [.investigator], effects: [.recordEvent, .stopClocks, .sendPreservationRelease],
                 strict: true)
        case .endPreservation:
            Rule(from: preservationRunning, to: .expired, owners: [.legalClock], effects: [.recordEvent, .stopClocks, .sendPreservationRelease],
                 strict: false)
        }
    }

    /// What a transition does to a request in `state`, caused by `owner`.
    public enum Decision: Sendable, Equatable {
        /// The request moves to the state; the store carries out the effects.
        case move(to: RequestState, effects: [Effect])
        /// Nothing changes: a message or clock that came late or twice.
        case stay
        /// Refused, with the reason to give the person (HTTP 409 Conflict), or, for an owner
        /// who may not cause the transition at all, HTTP 403.
        case refuse(Refusal)
    }

    /// Why a transition is refused.
    public enum Refusal: Sendable, Equatable {
        /// `owner` may not cause this transition.
        case notOwner(Owner)
        /// The request is in `state`, from which a person may not do this.
        case wrongState(RequestState, expected: Set<RequestState>)

        /// A sentence for a problem response; names states and roles, never content.
        public var reason: String {
            switch self {
            case .notOwner(let owner): "a request's \(owner.rawValue) may not do this"
            case .wrongState(let state, let expected):
                "request is \(state.rawValue), not \(expected.map(\.rawValue).sorted().joined(separator: " or "))"
            }
        }
    }

    /// Decides `transition` for a request in `state`, caused by `owner`.
    public static func decide(_ transition: Transition, from state: RequestState, by owner: Owner) -> Decision {
        let rule = rule(transition)
        guard rule.owners.contains(owner) else { return .refuse(.notOwner(owner)) }
        guard rule.from.contains(state) else { return rule.strict ? .refuse(.wrongState(state, expected: rule.from)) : .stay }
        return .move(to: rule.to, effects: rule.effects)
    }

    /// The legal clocks a transition stops. The review clock of an emergency runs on after
    /// delivery: only its review (or the request's end) stops it.
    public static func clocksStopped(by transition: Transition) -> [LegalClock.Kind] {
        switch transition {
        case .acknowledge, .progress, .deliverPart, .preserve: [.acknowledgement]
        case .deliver, .verify, .refuse, .expire, .revoke: [.acknowledgement, .delivery]
        case .release, .endPreservation: LegalClock.Kind.allCases
        case .submit, .withdraw, .approve, .reject, .dispatch: []
        }
    }

    /// Who approves a request of `priority`: the fast track for an emergency is a duty
    /// approver's (Directive 57's simplified procedure; EU 2023/1543 Art. 9's emergency).
    public static func approver(for priority: Priority) -> Owner {
        priority == .emergency ? .dutyApprover : .approver
    }

    /// The states reachable from `state` by any number of transitions, `state` included.
    public static func reachable(from state: RequestState) -> Set<RequestState> {
        var seen: Set<RequestState> = [state]
        var frontier = [state]
        while let s = frontier.popLast() {
            for t in Transition.allCases where rule(t).from.contains(s) && !seen.contains(rule(t).to) {
                seen.insert(rule(t).to)
                frontier.append(rule(t).to)
            }
        }
        return seen
    }

    /// States in which the request has been approved and sent: the provider may speak of it.
    public static let sent: Set<RequestState> = reachable(from: .approved)

    /// States from which no transition leads on.
    public static let final: Set<RequestState> = Set(RequestState.allCases.filter { s in !Transition.allCases.contains { rule($0).from.contains(s) } })

    /// Whether the request still waits for the provider (a clarification may be asked).
    public static func awaitsProvider(_ state: RequestState) -> Bool { awaitingData.contains(state) || preservationRunning.contains(state) }
}
