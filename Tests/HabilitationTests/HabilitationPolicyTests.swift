import Habilitation
import Testing

@Suite("The habilitation predicate")
struct HabilitationPolicyTests {
    let granted = HabilitationFacts(sessionLive: true, sessionOrigin: .sas, accountActive: true, suspendedByVendor: false, pendingActions: [])

    @Test func grantsOnlyWhenEveryFactHolds() {
        #expect(HabilitationPolicy.evaluate(granted) == .granted)
    }

    @Test func eachFactAloneWithdrawsIt() {
        var facts = granted
        facts.sessionLive = false
        #expect(HabilitationPolicy.evaluate(facts) == .denied([.noLiveSession]))
        facts = granted
        facts.sessionOrigin = .direct
        #expect(HabilitationPolicy.evaluate(facts) == .denied([.directSession]))
        facts = granted
        facts.accountActive = false
        #expect(HabilitationPolicy.evaluate(facts) == .denied([.deactivatedBySAS]))
        facts = granted
        facts.suspendedByVendor = true
        #expect(HabilitationPolicy.evaluate(facts) == .denied([.suspendedByVendor]))
        for action in RequiredAction.allCases {
            facts = granted
            facts.pendingActions = [action]
            #expect(HabilitationPolicy.evaluate(facts) == .denied([.requiredActionPending]))
        }
    }

    @Test func exhaustiveTruthTable() {
        for live in [true, false] {
            for origin in [SessionOrigin.sas, .direct] {
                for active in [true, false] {
                    for suspended in [true, false] {
                        for pending in [[], [RequiredAction.acceptCGU]] {
                            let facts = HabilitationFacts(sessionLive: live, sessionOrigin: origin, accountActive: active, suspendedByVendor: suspended, pendingActions: pending)
                            let expected = live && origin == .sas && active && !suspended && pending.isEmpty
                            #expect(HabilitationPolicy.evaluate(facts).isGranted == expected)
                        }
                    }
                }
            }
        }
    }
}
