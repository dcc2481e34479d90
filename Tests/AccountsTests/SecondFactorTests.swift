@testable import Accounts
import Foundation
import Habilitation
import Storage
import StorageTesting
import Testing

/// The server key and the second factors it protects: the key file tied to its database,
/// pending enrolments tied to their sign-in, and the admin's removal of a second factor.
@Suite("Second factors and the server key")
struct SecondFactorTests {
    static let password = "Vélo-rouge-sur-la-Loire"

    static func code(_ secret: [UInt8], at date: Date) -> String {
        let totp = TOTP()
        return totp.code(secret: secret, step: totp.step(at: date))
    }

    /// A key file is created only for a database with nothing sealed yet, and its fingerprint
    /// recorded; then only that key starts: another one, or none, is refused with the reason,
    /// and nothing is created in its place.
    @Test func startUpRefusesAKeyThatIsNotTheDatabases() async throws {
        let h = try await Harness()
        let directory = h.directory.appendingPathComponent("keys")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let path = directory.appendingPathComponent("secret.key").path
        let key = try await SecretKeyCheck.loadKey(path: path, database: h.database)
        #expect(FileManager.default.fileExists(atPath: path))
        #expect(try await SecretKeyCheck.loadKey(path: path, database: h.database) == key, "the same key starts again")

        // Another key file (a second instance given its own, a restore with the wrong one).
        let other = directory.appendingPathComponent("other.key").path
        try PrivateFile.create(path: other, contents: (0..<32).map { _ in UInt8.random(in: 0...255) })
        let refusal = await #expect(throws: SecretBoxError.self) { try await SecretKeyCheck.loadKey(path: other, database: h.database) }
        #expect(refusal?.description.contains("is not the key this database was sealed with") == true, "\(String(describing: refusal))")
        // No key file at all: refused, and none is created.
        let missing = directory.appendingPathComponent("missing.key").path
        let absent = await #expect(throws: SecretBoxError.self) { try await SecretKeyCheck.loadKey(path: missing, database: h.database) }
        #expect(absent?.description.contains("is missing") == true && absent?.description.contains("forget-secret-key") == true)
        #expect(!FileManager.default.fileExists(atPath: missing))
    }

    /// Instances starting at once on a new database: with one shared key, all start and one
    /// fingerprint is recorded; with a key each, exactly one of them starts.
    @Test func instancesStartingAtOnceAgreeOnOneKey() async throws {
        for shared in [true, false] {
            let h = try await Harness()
            let directory = h.directory.appendingPathComponent("keys")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let paths = (0..<4).map { directory.appendingPathComponent(shared ? "secret.key" : "secret-\($0).key").path }
            if !shared {
                for path in paths { try PrivateFile.create(path: path, contents: (0..<32).map { _ in UInt8.random(in: 0...255) }) }
            }
            let database = h.database
            let started = await withTaskGroup(of: [UInt8]?.self) { group in
                for path in paths { group.addTask { try? await SecretKeyCheck.loadKey(path: path, database: database) } }
                var keys: [[UInt8]?] = []
                for await key in group { keys.append(key) }
                return keys
            }
            let keys = started.compactMap { $0 }
            #expect(keys.count == (shared ? 4 : 1), "shared: \(shared)")
            #expect(Set(keys).count == 1)
            let rows = try await database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM secret_key_check") }
            #expect(rows == 1)
        }
    }

    /// A database from before the fingerprint: the key must open the TOTP secrets it sealed,
    /// and a missing key file is refused once anything is sealed.
    @Test func aDatabaseFromBeforeTheFingerprintIsCheckedAgainstWhatItSealed() async throws {
        let h = try await CredentialHarness()
        try await h.setPassword(Self.password)
        _ = try #require(try await h.store.beginTOTPEnrolment(accountID: h.accountID))
        let directory = h.accounts.directory.appendingPathComponent("keys")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let missing = directory.appendingPathComponent("missing.key").path
        await #expect(throws: SecretBoxError.self) { try await SecretKeyCheck.loadKey(path: missing, database: h.accounts.database) }
        #expect(!FileManager.default.fileExists(atPath: missing))
        // A new key cannot open the secret the harness's key sealed.
        let wrong = directory.appendingPathComponent("wrong.key").path
        try PrivateFile.create(path: wrong, contents: Array(repeating: 9, count: 32))
        await #expect(throws: SecretBoxError.self) { try await SecretKeyCheck.loadKey(path: wrong, database: h.accounts.database) }
        // A secret sealed by another key beside it (the old defect's new key): any key that
        // opens one of them is the installation's.
        let box9 = try SecretBox(key: Array(repeating: 9, count: 32))
        let other = try await h.accounts.create(try Fixtures.record(national: "810002673900", email: "autre@test.com")).account.id
        let sealed = try box9.seal(TOTP.generateSecret(), context: "totp:\(other)")
        try await h.accounts.database.write { db in
            try db.execute(sql: "INSERT INTO totp_credential (account_id, sealed_secret, created_at) VALUES (?, ?, 0)", arguments: [other, Data(sealed)])
        }
        let stranger = directory.appendingPathComponent("stranger.key").path
        try PrivateFile.create(path: stranger, contents: Array(repeating: 3, count: 32))
        await #expect(throws: SecretBoxError.self) { try await SecretKeyCheck.loadKey(path: stranger, database: h.accounts.database) }
        // The harness's key (7s) can: accepted, and recorded from then on.
        let right = directory.appendingPathComponent("right.key").path
        try PrivateFile.create(path: right, contents: Array(repeating: 7, count: 32))
        #expect(try await SecretKeyCheck.loadKey(path: right, database: h.accounts.database) == Array(repeating: 7, count: 32))
        await #expect(throws: SecretBoxError.self) { try await SecretKeyCheck.loadKey(path: wrong, database: h.accounts.database) }
    }

    /// A key lost for good: `forget-secret-key` discards what it sealed and the fingerprint,
    /// ends every session, and records it; the next start creates a new key. A regulator who
    /// had a second factor must choose a new password through a reset link before enrolling
    /// another (a phished password alone enrols nothing); one who had none keeps theirs.
    @Test func forgettingALostKeyDiscardsWhatItSealed() async throws {
        let h = try await CredentialHarness()
        try await h.setPassword(Self.password)
        let withoutFactor = try await h.accounts.create(try Fixtures.record(national: "810002673900", email: "lea.durand@test.com")).account.id
        let token = try #require(try await h.resetToken(email: "lea.durand@test.com"))
        #expect(try await h.store.resetPassword(token: token, newPassword: Self.password, actor: h.actor) == .success(withoutFactor))
        let secret = try #require(try await h.store.beginTOTPEnrolment(accountID: h.accountID))
        #expect(try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: Self.code(secret, at: h.clock.now),
                                                       actor: h.actor)?.count == 10)
        _ = try await h.resetToken()  // a queued mail (the two before it went with their links, spent)
        let directory = h.accounts.directory.appendingPathComponent("keys")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let right = directory.appendingPathComponent("right.key").path
        try PrivateFile.create(path: right, contents: Array(repeating: 7, count: 32))
        _ = try await SecretKeyCheck.loadKey(path: right, database: h.accounts.database)

        let administration = VendorAdministration(database: h.accounts.database, sessionConfiguration: SessionConfiguration())
        let result = try await administration.forgetSecretKey(actor: AuditActor(subject: "cli:operator", address: "local"))
        #expect(result.discarded == SecondFactorLedger.Discarded(totpSecrets: 1, recoveryCodes: 10, queuedMails: 1, passwordsToReset: 1))
        #expect(try await h.store.hasConfirmedTOTP(accountID: h.accountID) == false)
        let lost = directory.appendingPathComponent("new.key").path
        let key = try await SecretKeyCheck.loadKey(path: lost, database: h.accounts.database)
        #expect(key != Array(repeating: 7, count: 32) && FileManager.default.fileExists(atPath: lost))
        await #expect(throws: SecretBoxError.self) { try await SecretKeyCheck.loadKey(path: right, database: h.accounts.database) }
        let events = try await h.accounts.auditEvents()
        #expect(events.contains { $0.action == "secret-key-forgotten" && $0.detail?.contains("1 TOTP secret(s), 10 recovery code(s), 1 mail(s) discarded; 1 password(s) to reset") == true })
        // The right password no longer opens a sign-in until a reset (the new key is in
        // place), and retrying it is not counted: nobody locks themself out.
        for _ in 0..<4 {
            #expect(try await h.store.checkPassword(email: "jules.marius@test.com", password: Self.password, actor: h.actor)
                    == .refused(reason: .wrongPassword, accountID: h.accountID))
        }
        #expect(try await h.accounts.database.read { db in
            try Int.fetchOne(db, sql: "SELECT failed_sign_ins FROM account WHERE id = ?", arguments: [h.accountID])
        } == 0)
        #expect(try await h.accounts.auditEvents().filter { $0.outcome == "refused password-reset-required" }.count == 4)
        #expect(try await h.store.checkPassword(email: "lea.durand@test.com", password: Self.password, actor: h.actor) == .accepted(accountID: withoutFactor))
        h.clock.advance(121)  // past the two minutes in which a live link is not sent again
        try await h.setPassword("Another-good-passphrase")
        #expect(try await h.store.checkPassword(email: "jules.marius@test.com", password: "Another-good-passphrase", actor: h.actor)
                == .accepted(accountID: h.accountID))
    }

    /// A pending enrolment's secret belongs to the sign-in that showed it: whoever opened a
    /// flow once (through a stolen reset link) and left does not know the secret the
    /// regulator's own sign-in enrols. A password reset discards it too.
    @Test func aPendingEnrolmentDiesWithItsSignIn() async throws {
        let h = try await CredentialHarness()
        try await h.setPassword(Self.password)
        let seen = try #require(try await h.store.beginTOTPEnrolment(accountID: h.accountID))
        #expect(try await h.store.pendingTOTPSecret(accountID: h.accountID) == seen, "shown again within its sign-in")
        #expect(try await h.store.checkPassword(email: "jules.marius@test.com", password: Self.password, actor: h.actor) == .accepted(accountID: h.accountID))
        #expect(try await h.store.pendingTOTPSecret(accountID: h.accountID) == nil)
        let enrolled = try #require(try await h.store.beginTOTPEnrolment(accountID: h.accountID))
        #expect(enrolled != seen)
        try await h.setPassword("Another-good-passphrase")
        #expect(try await h.store.pendingTOTPSecret(accountID: h.accountID) == nil)
        // A confirmed TOTP is not touched by a sign-in.
        let secret = try #require(try await h.store.beginTOTPEnrolment(accountID: h.accountID))
        _ = try #require(try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: Self.code(secret, at: h.clock.now), actor: h.actor))
        #expect(try await h.store.checkPassword(email: "jules.marius@test.com", password: "Another-good-passphrase", actor: h.actor) == .accepted(accountID: h.accountID))
        #expect(try await h.store.hasConfirmedTOTP(accountID: h.accountID))
    }

    /// A locked account's enrolment code is not looked at, and says so (the web ends the flow,
    /// as at the code step), instead of « Code incorrect » in a loop.
    @Test func aLockedAccountsEnrolmentCodeIsNotChecked() async throws {
        let h = try await CredentialHarness()
        try await h.setPassword(Self.password)
        let sessions = SessionStore(database: h.accounts.database, serverKey: TestKeys.server, clock: { h.clock.now })
        let step = sessions.secondFactorStep(flowToken: try await sessions.startFlow(accountID: h.accountID, intentToken: nil), wrongCodesAllowed: 3)
        let secret = try #require(try await h.store.enrolmentSecret(accountID: h.accountID, for: step))
        try await h.accounts.database.write { [id = h.accountID, until = h.clock.now.addingTimeInterval(60)] db in
            try db.execute(sql: "UPDATE account SET failed_sign_ins = 5, locked_until = ? WHERE id = ?", arguments: [until.epochMilliseconds, id])
        }
        #expect(try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: Self.code(secret, at: h.clock.now), actor: h.actor, for: step) == .locked)
        #expect(try await !h.store.hasConfirmedTOTP(accountID: h.accountID))
        h.clock.advance(61)
        guard case .confirmed = try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: Self.code(secret, at: h.clock.now), actor: h.actor, for: step) else {
            Issue.record("once the lock ran out, the same flow's enrolment is confirmed"); return
        }
    }

    /// A pending enrolment belongs to the flow that began it: another flow of the same account
    /// (someone else holding the password) is never shown its secret nor may confirm it, and
    /// its own pending secret is never shown to the first flow, whose page begins a new one
    /// instead. Otherwise the regulator's page, re-rendered after a wrong code, would show the
    /// other's secret, and the regulator would enrol a device someone else also holds.
    @Test func aPendingEnrolmentBelongsToTheFlowThatBeganIt() async throws {
        let h = try await CredentialHarness()
        try await h.setPassword(Self.password)
        let sessions = SessionStore(database: h.accounts.database, serverKey: TestKeys.server, clock: { h.clock.now })
        let regulator = sessions.secondFactorStep(flowToken: try await sessions.startFlow(accountID: h.accountID, intentToken: nil), wrongCodesAllowed: 3)
        let other = sessions.secondFactorStep(flowToken: try await sessions.startFlow(accountID: h.accountID, intentToken: nil), wrongCodesAllowed: 3)
        // Two loads of the page at once show one secret, the one stored.
        async let first = h.store.enrolmentSecret(accountID: h.accountID, for: regulator)
        async let second = h.store.enrolmentSecret(accountID: h.accountID, for: regulator)
        let (one, other_) = try await (first, second)
        let shown = try #require(one)
        #expect(other_ == shown, "concurrent loads of one flow's page show the same secret")
        #expect(try await h.store.pendingTOTPSecret(accountID: h.accountID, for: regulator) == shown, "shown again within its own flow")
        #expect(try await h.store.enrolmentSecret(accountID: h.accountID, for: regulator) == shown)
        #expect(try await h.store.pendingTOTPSecret(accountID: h.accountID, for: other) == nil, "never to another flow")
        #expect(try await h.store.pendingTOTPSecret(accountID: h.accountID) == nil, "nor outside any flow")
        #expect(try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: Self.code(shown, at: h.clock.now), actor: h.actor, for: other) == .notPending)

        // The other flow begins its own: the regulator's page never shows it.
        let planted = try #require(try await h.store.beginTOTPEnrolment(accountID: h.accountID, for: other))
        #expect(try await h.store.pendingTOTPSecret(accountID: h.accountID, for: regulator) == nil)
        #expect(try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: Self.code(shown, at: h.clock.now), actor: h.actor, for: regulator) == .notPending,
                "the secret the regulator scanned was replaced: refused, nothing confirmed")
        #expect(try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: Self.code(planted, at: h.clock.now), actor: h.actor, for: regulator) == .notPending,
                "nor can the regulator's flow confirm the other's secret")
        #expect(try await h.store.enrolmentSecret(accountID: h.accountID, for: other) == planted, "the other flow's page shows its own")
        let fresh = try #require(try await h.store.enrolmentSecret(accountID: h.accountID, for: regulator))
        #expect(fresh != planted && fresh != shown)
        #expect(try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: Self.code(planted, at: h.clock.now), actor: h.actor, for: other) == .notPending,
                "the other's secret is worth nothing once replaced")
        let confirming = Self.code(fresh, at: h.clock.now)
        guard case .confirmed(let firstCodes) = try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: confirming, actor: h.actor, for: regulator) else {
            Issue.record("the regulator's own secret is confirmed"); return
        }
        #expect(try await h.store.beginTOTPEnrolment(accountID: h.accountID, for: other) == nil, "no enrolment once one is confirmed")
        // Until the regulator acknowledges the codes, the confirming code sent again by the
        // flow that enrolled (and it alone) has them issued again, voiding the first set.
        #expect(try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: confirming, actor: h.actor, for: other) == .notPending)
        #expect(try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: confirming, actor: h.actor, for: .outsideAnyFlow) == .notPending)
        #expect(try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: confirming == "000000" ? "000001" : "000000", actor: h.actor,
                                                       for: regulator) == .notPending, "a flow cookie alone voids nothing")
        guard case .reissued(let again) = try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: confirming, actor: h.actor, for: regulator) else {
            Issue.record("the confirming code sent again gets the codes again"); return
        }
        #expect(again.count == firstCodes.count && Set(again).isDisjoint(with: firstCodes))
        let storedCodes = try await h.accounts.database.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM recovery_code WHERE account_id = ?", arguments: [h.accountID])
        }
        #expect(storedCodes == again.count, "the first set is replaced, not added to")
        try await h.store.acknowledgeRecoveryCodes(accountID: h.accountID, for: other)
        guard case .reissued = try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: confirming, actor: h.actor, for: regulator) else {
            Issue.record("another step's acknowledgement is not the regulator's"); return
        }
        // A later code (the next TOTP step) is not the confirming one.
        #expect(try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: Self.code(fresh, at: h.clock.now.addingTimeInterval(30)), actor: h.actor,
                                                       for: regulator) == .notPending)
        try await h.store.acknowledgeRecoveryCodes(accountID: h.accountID, for: regulator)
        #expect(try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: confirming, actor: h.actor, for: regulator) == .notPending,
                "acknowledged: never again")
        let stored = try await h.accounts.database.read { db in
            try SQLRow.fetchOne(db, sql: "SELECT pending_step, confirmed_at FROM totp_credential WHERE account_id = ?", arguments: [h.accountID])
        }
        #expect(stored?["pending_step"] as String? == nil && stored?["confirmed_at"] as Int64? != nil, "the acknowledged factor is bound to no flow")
        // A flow that has ended begins nothing.
        let ended = try await sessions.startFlow(accountID: h.accountID, intentToken: nil)
        try await h.setPassword("Another-good-passphrase")
        #expect(try await h.store.beginTOTPEnrolment(accountID: h.accountID, for: sessions.secondFactorStep(flowToken: ended, wrongCodesAllowed: 3)) == nil)
    }

    /// The admin's answer to a lost phone: TOTP and recovery codes removed, sessions and
    /// links ended, in one audited transaction; the next sign-in enrols anew. Nothing to
    /// remove is recorded as such and changes nothing.
    @Test func resettingASecondFactor() async throws {
        let h = try await CredentialHarness()
        try await h.setPassword(Self.password)
        let administration = VendorAdministration(database: h.accounts.database, sessionConfiguration: SessionConfiguration())
        let actor = AuditActor(subject: "admin-api", address: "127.0.0.1")
        let nothing = try #require(try await administration.resetSecondFactor(accountID: h.accountID, actor: actor))
        #expect(!nothing.changed)
        let secret = try #require(try await h.store.beginTOTPEnrolment(accountID: h.accountID))
        let codes = try #require(try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: Self.code(secret, at: h.clock.now), actor: h.actor))
        _ = try await h.resetToken()
        let result = try #require(try await administration.resetSecondFactor(accountID: h.accountID, actor: actor))
        #expect(result.changed && result.resetLinks == 1)
        #expect(try await h.store.hasConfirmedTOTP(accountID: h.accountID) == false)
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: codes[0], actor: h.actor) == nil, "recovery codes are gone")
        // The password alone opens nothing now: a reset link (the mailbox) comes first.
        #expect(try await h.store.checkPassword(email: "jules.marius@test.com", password: Self.password, actor: h.actor)
                == .refused(reason: .wrongPassword, accountID: h.accountID))
        h.clock.advance(121)  // past the two minutes in which a live link is not sent again
        try await h.setPassword("Another-good-passphrase")
        #expect(try await h.store.checkPassword(email: "jules.marius@test.com", password: "Another-good-passphrase", actor: h.actor)
                == .accepted(accountID: h.accountID))
        let fresh = try #require(try await h.store.beginTOTPEnrolment(accountID: h.accountID), "the next sign-in enrols")
        #expect(fresh != secret)
        #expect(try await administration.resetSecondFactor(accountID: "no-such-account", actor: actor) == nil)
        let events = try await h.accounts.auditEvents()
        #expect(events.filter { $0.action == "second-factor-reset" }.count == 1)
        #expect(events.contains { $0.action == "admin-action" && $0.outcome == "reset-second-factor: unchanged" })
    }
}
