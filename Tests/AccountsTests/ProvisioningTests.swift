import Accounts
import Foundation
import Habilitation
import NIOConcurrencyHelpers
import GRDB
import Storage
import StorageTesting
import Testing

/// A fresh database file and provisioner per test; argon2 is cheap here (its cost is
/// measured by the benchmark, not the tests).
struct Harness {
    let directory: URL
    let database: AccountDatabase
    let provisioner: Provisioner
    let context = CallContext(actor: AuditActor(subject: "CN=test", serial: "01"), requestID: "test")

    init() async throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("accounts-\(UUID().uuidString)")
        database = try await TestStore.database(in: directory)
        provisioner = Provisioner(database: database, hasher: PasswordHasher(parameters: Argon2Parameters(memoryKiB: 64, iterations: 1, parallelism: 1), threads: 2), sessions: SessionLedger())
    }

    func create(_ record: RegulatorRecord) async throws(FHIRError) -> ProvisioningResult {
        try await provisioner.provision(.create(record), context: context)
    }

    func put(_ identifier: RegulatorIdentifier, _ record: RegulatorRecord, ifMatch: Int? = nil) async throws(FHIRError) -> ProvisioningResult {
        try await provisioner.provision(.conditionalUpdate(identifier, record, ifMatch: ifMatch.map { .versions([$0]) }), context: context)
    }

    func holder(_ identifier: RegulatorIdentifier) async throws -> AccountSnapshot? {
        try await database.read { db in try AccountQueries().snapshot(holding: identifier, in: db) }
    }

    func history(_ accountID: String) async throws -> [IdentifierAssignment] {
        try await database.read { db in try AccountQueries().identifierHistory(of: accountID, in: db) }
    }

    func accountCount() async throws -> Int {
        try await database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM account") ?? 0 }
    }

    func auditEvents() async throws -> [AuditEvent] {
        try await database.read { db in try AuditLog().events(in: db) }
    }
}

/// Runs a provisioning call expected to be refused; nil (and a recorded issue) if it succeeded.
func refusal(sourceLocation: SourceLocation = #_sourceLocation, _ operation: () async throws -> ProvisioningResult) async -> FHIRError? {
    do {
        _ = try await operation()
        Issue.record("the call was accepted", sourceLocation: sourceLocation)
        return nil
    } catch let error as FHIRError {
        return error
    } catch {
        Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

let national = RegulatorIdentifier.national(NationalID("810002673899")!)
let otherNational = RegulatorIdentifier.national(NationalID("810002673900")!)
let technical = RegulatorIdentifier.sasTechnical(SASTechnicalID("b6e39355-8a61-4556-b340-36f7b95fec6a")!)

@Suite("INT_R02 provisioning rules")
struct ProvisioningTests {
    @Test func createWithNationalID() async throws {
        let h = try await Harness()
        let result = try await h.create(try Fixtures.record())
        #expect(result.kind == .created)
        #expect(result.account.nationalID?.value == "810002673899")
        #expect(result.account.version == 1)
        #expect(result.account.passwordResetRequired)
        #expect(try await h.holder(national)?.id == result.account.id)
    }

    @Test func createWithTechnicalID() async throws {
        let h = try await Harness()
        let result = try await h.create(try Fixtures.record(national: nil, technical: technical.value))
        #expect(result.kind == .created)
        #expect(result.account.sasTechnicalID == SASTechnicalID(technical.value))
    }

    @Test func generatedPasswordIsArgon2idAndNeverStoredInClear() async throws {
        let h = try await Harness()
        let result = try await h.create(try Fixtures.record())
        let row = try await h.database.read { db in try AccountQueries().account(id: result.account.id, in: db) }
        #expect(row?.passwordHash.hasPrefix("$argon2id$v=19$m=64,t=1,p=1$") == true)
        #expect(row?.passwordResetRequired == true)
        // The audit trail never mentions the password or its hash.
        let events = try await h.auditEvents()
        #expect(events.allSatisfy { !($0.changes ?? "").contains("argon2") && !($0.changes ?? "").lowercased().contains("password") })
    }

    @Test func defaultArgon2ParametersAreAtLeastOWASPMinimum() throws {
        let encoded = try PasswordHasher.hashNow(Array("correct horse".utf8), parameters: .owaspMinimum)
        #expect(encoded.hasPrefix("$argon2id$v=19$m=19456,t=2,p=1$"))
        #expect(PasswordHasher.verifyNow(Array("correct horse".utf8), encoded: encoded))
        #expect(!PasswordHasher.verifyNow(Array("wrong horse".utf8), encoded: encoded))
    }

    @Test func generatedPasswordsAreLongAndDistinct() {
        let passwords = (0..<50).map { _ in PasswordGenerator.generate() }
        #expect(Set(passwords).count == 50)
        #expect(passwords.allSatisfy { $0.count == 43 })  // 256 bits in base64url
    }

    @Test func secondCreateIsRefused() async throws {
        let h = try await Harness()
        _ = try await h.create(try Fixtures.record())
        #expect(await refusal { try await h.create(try Fixtures.record(email: "other@test.com")) }?.category == .conflict)
        #expect(try await h.accountCount() == 1)
    }

    @Test func putOnUnknownIdentifierCreates() async throws {
        let h = try await Harness()
        let result = try await h.put(national, try Fixtures.record())
        #expect(result.kind == .created)
        // The URL's identifier joins the body's when the body lacks it.
        let created = try await h.put(technical, try Fixtures.record(national: otherNational.value, email: "b@test.com"))
        #expect(created.kind == .created)
        #expect(created.account.sasTechnicalID?.value == technical.value)
        #expect(created.account.nationalID?.value == otherNational.value)
    }

    @Test func putCreateWithContradictingIdentifierIsRefused() async throws {
        let h = try await Harness()
        #expect(await refusal { try await h.put(national, try Fixtures.record(national: otherNational.value)) }?.category == .unprocessable)
        #expect(try await h.accountCount() == 0)
    }

    @Test func updatesEveryField() async throws {
        let h = try await Harness()
        let created = try await h.create(try Fixtures.record())
        let cases: [(RegulatorRecord, String)] = [
            (try Fixtures.record(active: false), "active"),
            (try Fixtures.record(active: true), "active"),
            (try Fixtures.record(email: "new@test.com"), "email"),
            (try Fixtures.record(family: "MARIUS-NEW", email: "new@test.com"), "familyName"),
            (try Fixtures.record(family: "MARIUS-NEW", given: "Jean", email: "new@test.com"), "givenName"),
        ]
        var version = created.account.version
        for (record, field) in cases {
            let result = try await h.put(national, record)
            #expect(result.kind == .updated)
            #expect(result.changes.map(\.field) == [field])
            #expect(result.account.version == version + 1)
            #expect(result.account.id == created.account.id)
            version = result.account.version
        }
        let final = try #require(try await h.holder(national))
        #expect(final.familyName == "MARIUS-NEW" && final.givenName == "Jean" && final.email == "new@test.com" && final.active)
    }

    @Test func identicalUpdateChangesNothing() async throws {
        let h = try await Harness()
        let created = try await h.create(try Fixtures.record())
        let result = try await h.put(national, try Fixtures.record())
        #expect(result.kind == .unchanged)
        #expect(result.account.version == created.account.version)
        #expect(result.account.updatedAt == created.account.updatedAt)
    }

    @Test func deactivationIsStoredAtOnce() async throws {
        let h = try await Harness()
        _ = try await h.create(try Fixtures.record())
        let result = try await h.put(national, try Fixtures.validate("regulator-3-deactivated.json"))
        #expect(!result.account.active)
        #expect(try await h.holder(national)?.active == false)
    }

    @Test func nationalIDAttachedThroughTechnicalID() async throws {
        let h = try await Harness()
        let created = try await h.create(try Fixtures.record(national: nil, technical: technical.value))
        // Rule 3: PUT addressed by the technical id, body with the national id only.
        let result = try await h.put(technical, try Fixtures.record(national: national.value, technical: nil))
        #expect(result.kind == .updated)
        #expect(result.account.id == created.account.id)
        #expect(try await h.holder(national)?.id == created.account.id)
        #expect(try await h.holder(technical)?.id == created.account.id)
        #expect(result.account.identifiers.count == 2)
    }

    @Test func changingTheNationalIDKeepsHistory() async throws {
        let h = try await Harness()
        let created = try await h.create(try Fixtures.record())
        let result = try await h.put(national, try Fixtures.record(national: otherNational.value))
        #expect(result.account.nationalID?.value == otherNational.value)
        #expect(try await h.holder(national) == nil)
        #expect(try await h.holder(otherNational)?.id == created.account.id)
        let history = try await h.history(created.account.id)
        #expect(history.count == 2)
        #expect(history[0].value == national.value && history[0].endedReason == .replaced && history[0].endedAt != nil)
        #expect(history[1].value == otherNational.value && history[1].endedAt == nil)
    }

    /// The SAS retries a change of national id whose answer it lost: the same PUT again (URL
    /// the old IDNPS, body the new one). The account that replaced it is the one meant:
    /// unchanged, not a 422 contradiction nor a second account; its old version in If-Match
    /// fails as any stale precondition does. A PUT naming an identifier replaced on an account
    /// that no longer holds the body's identifier is still a contradiction.
    @Test func aRetriedChangeOfNationalIDIsAnsweredAsTheFirstCall() async throws {
        let h = try await Harness()
        let created = try await h.create(try Fixtures.record())
        let changed = try await h.put(national, try Fixtures.record(national: otherNational.value))
        let retried = try await h.put(national, try Fixtures.record(national: otherNational.value))
        #expect(retried.kind == .unchanged && retried.account.id == created.account.id && retried.account.version == changed.account.version)
        #expect(try await h.accountCount() == 1)
        #expect(await refusal { try await h.put(national, try Fixtures.record(national: otherNational.value), ifMatch: created.account.version) }?.category == .preconditionFailed)
        let third = RegulatorIdentifier.national(NationalID("810002673901")!)
        #expect(await refusal { try await h.put(national, try Fixtures.record(national: third.value)) }?.category == .unprocessable)
        // The same for a SAS technical id replaced by another.
        let newTechnical = RegulatorIdentifier.sasTechnical(SASTechnicalID("c6e39355-8a61-4556-b340-36f7b95fec6b")!)
        let other = try await h.create(try Fixtures.record(national: nil, technical: technical.value, email: "autre@test.fr"))
        _ = try await h.put(technical, try Fixtures.record(national: nil, technical: newTechnical.value, email: "autre@test.fr"))
        let again = try await h.put(technical, try Fixtures.record(national: nil, technical: newTechnical.value, email: "autre@test.fr"))
        #expect(again.kind == .unchanged && again.account.id == other.account.id)
        #expect(try await h.accountCount() == 2)
    }

    @Test func reattributionAfterDeactivation() async throws {
        let h = try await Harness()
        let first = try await h.create(try Fixtures.record())
        _ = try await h.put(national, try Fixtures.record(active: false))
        let second = try await h.create(try Fixtures.record(national: nil, technical: technical.value, email: "jules.marius@test.com"))
        let moved = try await h.put(technical, try Fixtures.record(national: national.value, technical: nil))
        #expect(moved.account.id == second.account.id)
        #expect(try await h.holder(national)?.id == second.account.id)
        let oldHistory = try await h.history(first.account.id)
        #expect(oldHistory.count == 1)
        #expect(oldHistory[0].endedReason == .reattributed && oldHistory[0].endedByAccountId == second.account.id)
        let events = try await h.auditEvents()
        #expect(events.contains { $0.action == "identifier-reattributed" && $0.accountId == first.account.id })
        // The account that lost its identifier changed: a new version, and what it shows
        // still says who it was (the identifier it held, as no longer valid).
        let old = try #require(try await h.database.read { db in try AccountQueries().snapshot(id: first.account.id, in: db) })
        #expect(old.version == 3, "created, withdrawn, then its identifier re-attributed")
        #expect(old.updatedAt == oldHistory[0].endedAt)
        #expect(old.identifiers.isEmpty)
        #expect(old.lastHeldIdentifiers.map(\.identifier) == [national])
        #expect(old.lastHeldIdentifiers.first?.endedAt == oldHistory[0].endedAt)
        guard case .object(let resource) = PractitionerRenderer.resource(old), case .array(let shown)? = resource["identifier"],
              case .object(let identifier)? = shown.first else { Issue.record("no identifier rendered"); return }
        #expect(shown.count == 1)
        #expect(identifier["use"] == .string("old") && identifier["value"] == .string(national.value))
        guard case .object(let period)? = identifier["period"] else { Issue.record("no period"); return }
        #expect(period["end"] == .string(AuditLog.timestamp(try #require(oldHistory[0].endedAt))))
        // The one that took it shows it as current.
        let taker = try #require(try await h.database.read { db in try AccountQueries().snapshot(id: second.account.id, in: db) })
        #expect(taker.identifiers.first == national && taker.lastHeldIdentifiers.isEmpty)
    }

    /// The old holder moves by one version per write that takes its identifiers (not one per
    /// identifier), and once it has none left it shows the last one it held of each kind,
    /// whenever each ended.
    @Test func anAccountLosingBothIdentifiersMovesOneVersionPerWrite() async throws {
        let h = try await Harness()
        let both = try await h.create(try Fixtures.record(national: national.value, technical: technical.value))
        _ = try await h.put(national, try Fixtures.record(national: national.value, technical: technical.value, active: false))
        let taker = try await h.create(try Fixtures.record(national: national.value, technical: technical.value, email: "autre@test.com"))
        #expect(taker.account.identifiers == [national, technical])
        let old = try #require(try await h.database.read { db in try AccountQueries().snapshot(id: both.account.id, in: db) })
        #expect(old.version == 3, "created, withdrawn, both identifiers taken in one write")
        #expect(old.lastHeldIdentifiers.map(\.identifier) == [national, technical])

        // Taken one at a time: one version each, and both shown at the end.
        let second = try await h.create(try Fixtures.record(national: otherNational.value, technical: nil, email: "deux@test.com"))
        let secondTechnical = RegulatorIdentifier.sasTechnical(SASTechnicalID("1ef1c748-01a3-6180-b098-73283ce4e5b1")!)
        _ = try await h.put(otherNational, try Fixtures.record(national: otherNational.value, technical: secondTechnical.value, active: false, email: "deux@test.com"))
        _ = try await h.create(try Fixtures.record(national: otherNational.value, technical: nil, email: "trois@test.com"))
        var partly = try #require(try await h.database.read { db in try AccountQueries().snapshot(id: second.account.id, in: db) })
        #expect(partly.version == 3 && partly.identifiers == [secondTechnical] && partly.lastHeldIdentifiers.isEmpty)
        _ = try await h.create(try Fixtures.record(national: nil, technical: secondTechnical.value, email: "quatre@test.com"))
        partly = try #require(try await h.database.read { db in try AccountQueries().snapshot(id: second.account.id, in: db) })
        #expect(partly.version == 4 && partly.identifiers.isEmpty)
        #expect(partly.lastHeldIdentifiers.map(\.identifier) == [otherNational, secondTechnical])
    }

    @Test func reattributionByCreateAfterDeactivation() async throws {
        let h = try await Harness()
        let first = try await h.create(try Fixtures.record())
        _ = try await h.put(national, try Fixtures.record(active: false))
        let second = try await h.create(try Fixtures.record())
        #expect(second.account.id != first.account.id)
        #expect(try await h.holder(national)?.id == second.account.id)
    }

    /// A POST of a withdrawn regulator whose identifier a withdrawn account holds is refused:
    /// otherwise each retry created one more withdrawn account and moved the identifier to it.
    @Test func aWithdrawnCreateDoesNotTakeAnIdentifierFromAWithdrawnAccount() async throws {
        let h = try await Harness()
        let first = try await h.create(try Fixtures.record())
        _ = try await h.put(national, try Fixtures.record(active: false))
        for _ in 0..<3 {
            #expect(await refusal { try await h.create(try Fixtures.record(active: false)) }?.category == .conflict)
        }
        #expect(try await h.accountCount() == 1)
        #expect(try await h.holder(national)?.id == first.account.id)
        // A PUT that creates is not a POST: its retry matches what its first call created.
        let put = try await h.put(technical, try Fixtures.record(technical: technical.value, active: false, email: "c@test.com"))
        #expect(put.kind == .created)
        #expect(try await h.holder(national)?.id == put.account.id, "re-attributed: the PUT creates")
        #expect(try await h.put(technical, try Fixtures.record(technical: technical.value, active: false, email: "c@test.com")).kind == .unchanged)
        #expect(try await h.accountCount() == 2)
    }

    @Test func identifierOfAnActiveAccountDoesNotMove() async throws {
        let h = try await Harness()
        let first = try await h.create(try Fixtures.record())
        _ = try await h.create(try Fixtures.record(national: nil, technical: technical.value, email: "b@test.com"))
        #expect(await refusal { try await h.put(technical, try Fixtures.record(national: national.value, technical: nil, email: "b@test.com")) }?.category == .conflict)
        #expect(try await h.holder(national)?.id == first.account.id)
        #expect(try await h.holder(technical)?.nationalID == nil)
    }

    @Test func emailBelongsToOneActiveAccount() async throws {
        let h = try await Harness()
        let first = try await h.create(try Fixtures.record())
        let emailRefusal = await refusal { try await h.create(try Fixtures.record(national: nil, technical: technical.value, email: "JULES.marius@test.com")) }
        #expect(emailRefusal?.category == .conflict)
        #expect(emailRefusal?.issues.first?.expression == ["Practitioner.telecom[0].value"])
        _ = try await h.create(try Fixtures.record(national: nil, technical: technical.value, email: "b@test.com"))
        // Update to a taken e-mail is refused and changes nothing.
        #expect(await refusal { try await h.put(technical, try Fixtures.record(national: nil, technical: technical.value, family: "Changed", email: "jules.marius@test.com")) }?.category == .conflict)
        #expect(try await h.holder(technical)?.familyName == "MARIUS")
        // Once the first account is deactivated its e-mail is free...
        _ = try await h.put(national, try Fixtures.record(active: false))
        let moved = try await h.put(technical, try Fixtures.record(national: nil, technical: technical.value, email: "jules.marius@test.com"))
        #expect(moved.account.email == "jules.marius@test.com")
        // ...and reactivating it would now collide.
        #expect(await refusal { try await h.put(national, try Fixtures.record(active: true)) }?.category == .conflict)
        #expect(try await h.holder(national)?.id == first.account.id)
        #expect(try await h.holder(national)?.active == false)
    }

    @Test func ifMatchIsHonoured() async throws {
        let h = try await Harness()
        _ = try await h.create(try Fixtures.record())
        #expect(await refusal { try await h.put(national, try Fixtures.record(family: "X"), ifMatch: 7) }?.category == .preconditionFailed)
        let result = try await h.put(national, try Fixtures.record(family: "X"), ifMatch: 1)
        #expect(result.account.version == 2)
    }

    @Test func everyCallIsAudited() async throws {
        let h = try await Harness()
        let created = try await h.create(try Fixtures.record())
        _ = try await h.put(national, try Fixtures.record(family: "NEW"))
        let events = try await h.auditEvents()
        #expect(events.map(\.outcome) == ["201 created", "200 updated"])
        #expect(events.allSatisfy { $0.actorSubject == "CN=test" && $0.actorSerial == "01" && $0.accountId == created.account.id })
        #expect(events[1].changes?.contains("\"field\":\"familyName\"") == true)
    }

    @Test func auditTrailIsAppendOnly() async throws {
        let h = try await Harness()
        _ = try await h.create(try Fixtures.record())
        for sql in ["UPDATE audit_event SET outcome = 'x'", "DELETE FROM audit_event"] {
            await #expect(throws: StorageError.self, "\(sql)") {
                try await h.database.write { db in try db.execute(sql: sql) }
            }
        }
        #expect(try await h.auditEvents().count == 1)
    }

    /// On the database file itself, with a plain connection (what someone with the file in
    /// hand would use): no form of insert rewrites an existing row. `INSERT OR REPLACE`
    /// deletes the old row without firing the DELETE trigger, so it needs its own guard.
    @Test(.enabled(if: TestStore.kind == .sqlite)) func auditTrailResistsReplaceOnTheFile() async throws {
        let h = try await Harness()
        _ = try await h.create(try Fixtures.record())
        let original = try #require(try await h.auditEvents().first)
        let file = try DatabaseQueue(path: try #require(h.database.engine as? SQLiteEngine).path)
        for sql in ["INSERT OR REPLACE INTO audit_event (seq, at, surface, action, outcome) VALUES (1, 0, 'forged', 'forged', 'forged')",
                    "REPLACE INTO audit_event (seq, at, surface, action, outcome) VALUES (1, 0, 'forged', 'forged', 'forged')",
                    "INSERT INTO audit_event (seq, at, surface, action, outcome) VALUES (1, 0, 'forged', 'forged', 'forged') ON CONFLICT(seq) DO UPDATE SET outcome = 'forged'",
                    "INSERT OR IGNORE INTO audit_event (seq, at, surface, action, outcome) VALUES (1, 0, 'forged', 'forged', 'forged')"] {
            #expect(throws: DatabaseError.self, "\(sql)") { try file.write { db in try db.execute(sql: sql) } }
        }
        // Nor dates a new one before the last (exports paging with `after=` would never see it).
        _ = try await h.put(national, try Fixtures.record(family: "SECOND"))
        for sql in ["INSERT INTO audit_event (seq, at, surface, action, outcome) VALUES (-1, 0, 'forged', 'forged', 'forged')",
                    "INSERT INTO audit_event (seq, at, surface, action, outcome) VALUES (0, 0, 'forged', 'forged', 'forged')"] {
            #expect(throws: DatabaseError.self, "\(sql)") { try file.write { db in try db.execute(sql: sql) } }
        }
        // A genuinely new row is still accepted (append-only, not read-only), with a seq of its
        // own choosing too if it comes after the last.
        try await file.write { db in try db.execute(sql: "INSERT INTO audit_event (at, surface, action, outcome) VALUES (0, 'cli', 'note', 'ok')") }
        try await file.write { db in try db.execute(sql: "INSERT INTO audit_event (seq, at, surface, action, outcome) VALUES (1000, 0, 'cli', 'later', 'ok')") }
        let events = try await h.auditEvents()
        #expect(events.count == 4 && events.first == original && events.map(\.action).suffix(2) == ["note", "later"], "\(events.map(\.action))")
    }

    /// The database, its WAL and shared-memory files and the directory are private whatever
    /// the umask, and a file left readable by an earlier version is narrowed at open.
    @Test(.enabled(if: TestStore.kind == .sqlite)) func databaseFilesArePrivate() async throws {
        let previous = umask(0)
        defer { umask(previous) }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("perm-\(UUID().uuidString)/data")
        let path = directory.appendingPathComponent("db.sqlite").path
        let database = try AccountDatabase(path: path)
        try await database.write { db in try db.execute(sql: "INSERT INTO audit_event (at, surface, action, outcome) VALUES (0, 'cli', 'x', 'x')") }
        func mode(_ path: String) throws -> Int { (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int) ?? -1 }
        #expect(try mode(directory.path) == 0o700)
        // The folder created on the way too: world-writable, it would let anyone swap `data`.
        #expect(try mode(directory.deletingLastPathComponent().path) == 0o700)
        for suffix in ["", "-wal", "-shm"] {
            let found = try mode(path + suffix)
            #expect(found == 0o600, "db\(suffix): \(String(found, radix: 8))")
        }
        let secureDelete = try await database.read { db in try Int.fetchOne(db, sql: "PRAGMA secure_delete") }
        #expect(secureDelete == 1)

        let older = directory.appendingPathComponent("older.sqlite").path
        FileManager.default.createFile(atPath: older, contents: nil, attributes: [.posixPermissions: 0o644])
        _ = try AccountDatabase(path: older)
        #expect(try mode(older) == 0o600)
    }

    /// One refusal writes one bounded row, however much the client sent.
    @Test func auditRowsAreBounded() throws {
        let huge = String(repeating: "x", count: 500_000)
        let event = AuditEvent(at: Date(), surface: "int_r02", action: "create", outcome: "400 refused", actor: AuditActor(subject: huge),
                               requestID: huge, identifier: huge, accountID: nil, changes: [FieldChange(field: "family", old: huge, new: huge)], detail: huge)
        let size = [event.actorSubject, event.requestId, event.identifier, event.changes, event.detail].compactMap { $0?.utf8.count }.reduce(0, +)
        #expect(size < 16 * 1024, "\(size) bytes")
        let manyIssues = FHIRError(.invalidContent, issues: (0..<5000).map { FHIRIssue(code: .structure, diagnostics: "null at \($0)", expression: ["Practitioner.identifier[\($0)]"]) })
        #expect(manyIssues.summary().hasSuffix("and 4990 more issue(s)"))
    }

    @Test func concurrentUpsertsCreateOneAccountAndLoseNoUpdate() async throws {
        let h = try await Harness()
        let outcomes = await withTaskGroup(of: Result<ProvisioningResult, FHIRError>.self) { group in
            for index in 0..<24 {
                group.addTask {
                    let record = try! Fixtures.record(family: "F\(index)")
                    do throws(FHIRError) { return .success(try await h.put(national, record)) } catch { return .failure(error) }
                }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        let results = outcomes.compactMap { try? $0.get() }
        #expect(results.count == 24, "every concurrent upsert succeeds: \(outcomes)")
        #expect(results.filter { $0.kind == .created }.count == 1)
        #expect(try await h.accountCount() == 1)
        // Every family name differs, so every update is a change: versions 1...24 with no gap
        // or repeat means each update saw the one before it (no lost update).
        let versions = results.map { $0.account.version }.sorted()
        #expect(versions == Array(1...24))
        let final = try #require(try await h.holder(national))
        #expect(results.contains { $0.account.version == final.version && $0.account.familyName == final.familyName })
    }

    @Test func concurrentCreatesYieldOneAccountAndConflicts() async throws {
        let h = try await Harness()
        let outcomes = await withTaskGroup(of: FHIRError.Category?.self) { group in
            for _ in 0..<16 {
                group.addTask {
                    let record = try! Fixtures.record()
                    do throws(FHIRError) { _ = try await h.create(record); return nil } catch { return error.category }
                }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        #expect(outcomes.filter { $0 == nil }.count == 1)
        #expect(outcomes.compactMap { $0 }.allSatisfy { $0 == .conflict })
        #expect(try await h.accountCount() == 1)
    }
}

extension Fixtures {
    static func validate(_ example: String) throws -> RegulatorRecord {
        try PractitionerValidator().validate(try Fixtures.example(example))
    }
}

@Suite("Database access")
struct DatabaseAccessTests {
    /// Paging the audit trail never skips an event. On PostgreSQL a write that drew its `seq`
    /// first may commit after a later one: the administration's read waits for it, so a page
    /// never ends past a `seq` still in flight. (A plain snapshot here answered the later
    /// event alone, and a reader paging `after` it would never have seen the first.) On
    /// SQLite the later write waits for the first, and the page is the same.
    @Test(.timeLimit(.minutes(5)))
    func auditPagesNeverSkipAnEventCommittedLate() async throws {
        let h = try await Harness()
        let administration = VendorAdministration(database: h.database)
        @Sendable func event(_ action: String) -> AuditEvent {
            AuditEvent(at: Date(), surface: "test", action: action, outcome: "ok", actor: AuditActor(subject: "CN=test"), requestID: nil,
                       identifier: nil, accountID: nil, changes: [], detail: nil)
        }
        let drawn = NIOLockedValueBox(false), slept = NIOLockedValueBox(false)
        let slow = Task {
            try await h.database.write { db in
                try AuditLog().append(event("first"), in: db)
                _ = try db.changesCount  // sent: its seq is drawn
                drawn.withLockedValue { $0 = true }
                // Under the 2 s an audit read waits for the writes in flight.
                Thread.sleep(forTimeInterval: 1.2)
                slept.withLockedValue { $0 = true }
            }
        }
        while !drawn.withLockedValue({ $0 }) { try await Task.sleep(for: .milliseconds(10)) }
        try await h.database.write { db in try AuditLog().append(event("second"), in: db) }
        if h.database.kind == .postgres {
            #expect(!slept.withLockedValue { $0 }, "the second write committed while the first was in flight")
        }
        let page = try await administration.auditEvents(afterSeq: 0)
        #expect(page.map(\.action) == ["first", "second"])
        #expect(page.compactMap(\.seq) == page.compactMap(\.seq).sorted() && page.allSatisfy { $0.seq != nil })
        try await slow.value
    }

    /// More concurrent reads than reader connections, each slow enough to overlap: the gate
    /// queues the excess without blocking, and every read completes. (The limit catches a
    /// hang only: alone the test takes a second, in the full parallel suite up to a minute.
    /// Each read counts to 5,000: at 20,000, on PostgreSQL in the whole suite on a slow hour,
    /// the last reads waited more than the engine's 30 s for a connection, 2026-12-01.)
    @Test(.timeLimit(.minutes(5)))
    func manyConcurrentReadsComplete() async throws {
        let h = try await Harness()
        let counts = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<64 {
                group.addTask {
                    try await h.database.read { db in
                        try Int.fetchOne(db, sql: "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 5000) SELECT COUNT(*) FROM n") ?? 0
                    }
                }
            }
            return try await group.reduce(into: [Int]()) { $0.append($1) }
        }
        #expect(counts.count == 64 && counts.allSatisfy { $0 == 5000 })
    }
}
