@testable import AccountServer
import Accounts
import AsyncHTTPClient
import Crypto
import Foundation
import Logging
import NIOCore
import Storage
import StorageTesting
import Testing

/// The vendor admins' own tokens (`--admin-tokens-file`, `account-server admin token`): the
/// trail names who acted, a removed token is refused from its next request (its page sessions
/// ended), and a file that cannot be trusted grants nothing.
@Suite("Named admin tokens")
struct AdminTokensTests {
    typealias World = WebSignInTests.World

    static func folder() throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("admin-tokens-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        return directory
    }

    /// A migrated database for the commands to record their changes in: their `--database`
    /// arguments, and the database to read the trail from.
    static func database(in directory: URL) async throws -> (arguments: [String], database: AccountDatabase) {
        let argument = try await TestStore.argument(in: directory)
        let database = try await TestStore.open(argument, poolSize: 1)
        return (["--database", argument], database)
    }

    static func entry(_ name: String, _ token: String, role: AdminRole = .manage) -> NamedAdminToken {
        NamedAdminToken(name: name, digest: Array(SHA256.hash(data: Array(token.utf8))), role: role)
    }

    @Test func theFileIsReadStrictly() throws {
        let digest = String(repeating: "ab", count: 32)
        let other = String(repeating: "cD", count: 32)
        let entries = try NamedAdminToken.parse("# comment\n\nalice.martin sha256:\(digest)\r\nbob@vendor.fr  sha256:\(other)\n", path: "f")
        #expect(entries.map(\.name) == ["alice.martin", "bob@vendor.fr"])
        #expect(entries.map(\.digest) == [Array(repeating: 0xab, count: 32), Array(repeating: 0xcd, count: 32)])
        #expect(entries.allSatisfy { $0.role == .manage }, "a line without a role may manage, as before roles existed")
        let roles = try NamedAdminToken.parse("carol sha256:\(digest) view\ndave sha256:\(other)  manage\n", path: "f")
        #expect(roles.map(\.role) == [.view, .manage])
        #expect(roles.map(\.line) == ["carol sha256:\(digest) view", "dave sha256:\(other.lowercased())"], "manage written without its role (earlier servers read it)")
        for bad in ["alice", "alice sha256:\(digest) extra", "alice sha256:\(digest) View", "alice sha256:\(digest) read",
                    "alice sha256:\(digest) view manage", "alice sha256:\(digest) view,", "alice sha1:\(digest)", "alice sha256:\(digest.dropLast(2))", "alice sha256:zz\(digest.dropFirst(2))",
                    "-alice sha256:\(digest)", "al ice sha256:\(digest)", "alicé sha256:\(digest)", "alice\u{1b}[31m sha256:\(digest)",
                    "alice sha256:\(digest)\nalice sha256:\(digest)", "alice sha256:\(digest)\nalice.ro sha256:\(digest.uppercased()) view"] {
            #expect(throws: ConfigurationError.self, "\(bad.debugDescription)") { try NamedAdminToken.parse(bad, path: "f") }
        }
        #expect(NamedAdminToken.isValidName(String(repeating: "a", count: 64)) && !NamedAdminToken.isValidName(String(repeating: "a", count: 65)))
        #expect(!NamedAdminToken.isValidName("") && !NamedAdminToken.isValidName("a:b") && NamedAdminToken.isValidName("7-ops_team.1"))
    }

    /// The keyring tells the shared token from a named one, sees the file change on the next
    /// look (a rename over it, as the CLI writes), and fails closed on a broken or exposed file
    /// while the shared token keeps working.
    @Test func theKeyringFollowsTheFile() throws {
        let directory = try Self.folder()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("admin-tokens").path
        let shared = SecretToken.generate(), alice = SecretToken.generate(), bob = SecretToken.generate()
        let keyring = AdminKeyring(shared: AdminToken(token: shared), namedPath: path, logger: Logger(label: "test"))
        #expect(keyring.identify(shared)?.name == nil && keyring.identify(shared) != nil)
        #expect(keyring.identify(alice) == nil, "no file: no named token")
        try AdminTokenFile.write([Self.entry("alice", alice)], to: path)
        let aliceIdentity = try #require(keyring.identify(alice))
        #expect(aliceIdentity.name == "alice" && aliceIdentity.subject(via: "admin-api") == "admin-api:alice")
        #expect(keyring.identify(bob) == nil && keyring.identify(alice + "x") == nil)
        try AdminTokenFile.write([Self.entry("alice", alice), Self.entry("bob", bob)], to: path)
        #expect(keyring.identify(bob)?.name == "bob" && keyring.current(aliceIdentity) == aliceIdentity)
        #expect(aliceIdentity.role == .manage && keyring.identify(shared)?.role == .manage)
        // A role changed in the file: the identity held (a page session's) reads it now.
        try AdminTokenFile.write([Self.entry("alice", alice, role: .view), Self.entry("bob", bob)], to: path)
        #expect(keyring.current(aliceIdentity)?.role == .view && keyring.identify(alice)?.role == .view)
        try AdminTokenFile.write([Self.entry("alice", alice), Self.entry("bob", bob)], to: path)
        #expect(keyring.current(aliceIdentity)?.role == .manage)
        // alice's token removed, then a new one issued under her name: the old one's
        // identity (a page session opened with it) no longer holds.
        try AdminTokenFile.write([Self.entry("bob", bob), Self.entry("alice", SecretToken.generate())], to: path)
        #expect(keyring.identify(alice) == nil && keyring.current(aliceIdentity) == nil)
        // A broken edit: every named token refused, the shared one still accepted.
        try "bob sha256:not-hex\n".write(toFile: path, atomically: false, encoding: .utf8)
        #expect(keyring.identify(bob) == nil && keyring.identify(shared) != nil)
        try AdminTokenFile.write([Self.entry("bob", bob)], to: path)
        #expect(keyring.identify(bob)?.name == "bob", "fixed: read again")
        // Whoever may write the file is an admin: one writable by others grants nothing.
        #expect(chmod(path, 0o666) == 0)
        #expect(keyring.identify(bob) == nil)
        // Found so at start: the server starts (its FHIR and web listeners do not depend on
        // this file), the named tokens refused, the shared one accepted.
        let atStart = AdminKeyring(shared: AdminToken(token: shared), namedPath: path, logger: Logger(label: "test"))
        #expect(atStart.identify(bob) == nil && atStart.identify(shared) != nil)
        #expect(chmod(path, 0o600) == 0)
        #expect(keyring.identify(bob)?.name == "bob")
        // A line not understood at start: the same.
        try "bob sha256:\(String(repeating: "ab", count: 32))\nbob\n".write(toFile: path, atomically: false, encoding: .utf8)
        let brokenAtStart = AdminKeyring(shared: AdminToken(token: shared), namedPath: path, logger: Logger(label: "test"))
        #expect(brokenAtStart.identify(bob) == nil && brokenAtStart.identify(shared) != nil)
        // A digest of a short text written by hand (here the empty one) makes no short
        // bearer an admin.
        try AdminTokenFile.write([Self.entry("bob", bob), Self.entry("empty", "")], to: path)
        #expect(keyring.identify(bob)?.name == "bob" && keyring.identify("") == nil)
        try FileManager.default.removeItem(atPath: path)
        #expect(keyring.identify(bob) == nil, "the file removed: no named token")
    }

    /// `account-server admin token`: the token on standard output once, only its digest in a
    /// 0600 file; a name twice or a bad name refused; `remove` and `list`; the default file is
    /// beside `--admin-token-file`.
    @Test func theCommandLineMakesListsAndRemovesTokens() async throws {
        let directory = try Self.folder()
        defer { try? FileManager.default.removeItem(at: directory) }
        let sharedPath = directory.appendingPathComponent("admin.token").path
        let path = directory.appendingPathComponent("admin-tokens").path
        let (store, database) = try await Self.database(in: directory)
        let noRole = try await ProcessTests.run(["admin", "token", "add", "alice.martin", "--admin-token-file", sharedPath] + store)
        #expect(noRole.status != 0 && noRole.errors.contains("--role") && noRole.output.isEmpty, "the role is the operator's choice: \(noRole)")
        #expect(!FileManager.default.fileExists(atPath: path))
        let added = try await ProcessTests.run(["admin", "token", "add", "alice.martin", "--role", "manage", "--admin-token-file", sharedPath] + store)
        let token = added.output.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(added.status == 0 && token.count >= 40 && added.errors.contains("alice.martin") && !added.errors.contains(token), "\(added)")
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(!text.contains(token) && text.contains("alice.martin sha256:\(Self.entry("alice.martin", token).line.split(separator: ":").last!)"), "\(text)")
        #expect(try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int == 0o600)
        let again = try await ProcessTests.run(["admin", "token", "add", "alice.martin", "--role", "view", "--tokens-file", path] + store)
        #expect(again.status != 0 && again.errors.contains("already has a token") && again.output.isEmpty, "\(again)")
        let badName = try await ProcessTests.run(["admin", "token", "add", "alice martin\u{1b}", "--role", "view", "--tokens-file", path] + store)
        #expect(badName.status != 0 && badName.output.isEmpty)
        let badRole = try await ProcessTests.run(["admin", "token", "add", "bob", "--role", "admin", "--tokens-file", path] + store)
        #expect(badRole.status != 0 && badRole.output.isEmpty, "\(badRole)")
        let bobAdded = try await ProcessTests.run(["admin", "token", "add", "bob", "--role", "view", "--tokens-file", path] + store)
        #expect(bobAdded.status == 0 && bobAdded.errors.contains("role view"))
        #expect(try await ProcessTests.run(["admin", "token", "list", "--tokens-file", path]).output == "alice.martin manage\nbob view\n")
        let keyring = AdminKeyring(shared: AdminToken(token: SecretToken.generate()), namedPath: path, logger: Logger(label: "test"))
        #expect(keyring.identify(token)?.name == "alice.martin" && keyring.identify(token)?.role == .manage)
        // A role changed in place: the same token, now read-only; then back.
        let demoted = try await ProcessTests.run(["admin", "token", "role", "alice.martin", "view", "--tokens-file", path] + store)
        #expect(demoted.status == 0 && demoted.errors.contains("now has the role view (was manage)"), "\(demoted)")
        #expect(keyring.identify(token)?.role == .view)
        let same = try await ProcessTests.run(["admin", "token", "role", "alice.martin", "view", "--tokens-file", path] + store)
        #expect(same.status == 0 && same.errors.contains("nothing changed"), "\(same)")
        #expect(try await ProcessTests.run(["admin", "token", "role", "carol", "view", "--tokens-file", path] + store).status != 0)
        #expect(try await ProcessTests.run(["admin", "token", "role", "alice.martin", "manage", "--tokens-file", path] + store).status == 0)
        #expect(keyring.identify(token)?.role == .manage)
        #expect(try await ProcessTests.run(["admin", "token", "remove", "alice.martin", "--tokens-file", path] + store).status == 0)
        #expect(keyring.identify(token) == nil)
        #expect(try await ProcessTests.run(["admin", "token", "list", "--tokens-file", path]).output == "bob view\n")
        let missing = try await ProcessTests.run(["admin", "token", "remove", "carol", "--tokens-file", path] + store)
        #expect(missing.status != 0 && missing.errors.contains("no token for"))
        // A folder that does not exist is another path than the servers': refused, nothing made.
        let elsewhere = directory.appendingPathComponent("typo/admin-tokens").path
        let typo = try await ProcessTests.run(["admin", "token", "add", "dave", "--role", "manage", "--tokens-file", elsewhere] + store)
        #expect(typo.status != 0 && typo.errors.contains("no such folder") && typo.output.isEmpty, "\(typo)")
        #expect(!FileManager.default.fileExists(atPath: directory.appendingPathComponent("typo").path))
        // A database out of reach: refused before a token is made or the file touched.
        let fileBefore = try String(contentsOfFile: path, encoding: .utf8)
        let unreachable = try await ProcessTests.run(["admin", "token", "add", "erin", "--role", "view", "--tokens-file", path,
                                                      "--database", directory.appendingPathComponent("no-such.sqlite").path])
        #expect(unreachable.status != 0 && unreachable.errors.contains("audit trail") && unreachable.errors.contains("nothing changed")
                && unreachable.output.isEmpty, "\(unreachable)")
        #expect(try String(contentsOfFile: path, encoding: .utf8) == fileBefore)

        // Every change is in the trail, as the operator who made it; no refused command is.
        let events = try await database.read { db in try AuditLog().events(in: db) }.filter { $0.action.hasPrefix("admin-token-") }
        let shownPath = AdminTokenFile.shown(path)
        let expected: [(String, String, String)] = [
            ("admin-token-added", "role manage", "alice.martin"), ("admin-token-added", "role view", "bob"),
            ("admin-token-role-changed", "role view (was manage)", "alice.martin"), ("admin-token-role-changed", "role manage (was view)", "alice.martin"),
            ("admin-token-removed", "role manage", "alice.martin"),
        ]
        #expect(events.map { "\($0.action) \($0.outcome) \($0.detail ?? "")" } == expected.map { "\($0.0) \($0.1) \($0.2) in \(shownPath)" }, "\(events)")
        #expect(events.allSatisfy { $0.actorSubject == ProcessTests.operatorSubject && $0.actorAddress == "local" && $0.surface == "admin" })
        #expect(!events.contains { $0.detail?.contains(token) == true }, "no token in the trail")
    }

    /// Commands run at once all apply (a lock around each rewrite): none undoes another's
    /// change. Run as root on the service's file, a command keeps its owner and mode.
    @Test func commandsRunAtOnceAllApplyAndKeepTheFilesOwner() async throws {
        let directory = try Self.folder()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("admin-tokens").path
        let (store, database) = try await Self.database(in: directory)
        let names = (1...6).map { "admin\($0)" }
        let runs = try await withThrowingTaskGroup(of: Int32.self) { group in
            for name in names { group.addTask { try await ProcessTests.run(["admin", "token", "add", name, "--role", "manage", "--tokens-file", path] + store).status } }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(runs.allSatisfy { $0 == 0 })
        let listed = try await ProcessTests.run(["admin", "token", "list", "--tokens-file", path]).output
        #expect(Set(listed.split(separator: "\n").map(String.init)) == Set(names.map { "\($0) manage" }), "every add applied: \(listed)")
        let added = try await database.read { db in try AuditLog().events(in: db) }.filter { $0.action == "admin-token-added" }
        #expect(Set(added.compactMap { $0.detail?.split(separator: " ").first.map(String.init) }) == Set(names), "each recorded once: \(added)")
        #expect(added.count == names.count)
        guard geteuid() == 0 else { return }  // the ownership part needs root
        #expect(chown(path, 65534, 65534) == 0 && chmod(path, 0o640) == 0)
        #expect(try await ProcessTests.run(["admin", "token", "remove", "admin1", "--tokens-file", path] + store).status == 0)
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        #expect(attributes[.ownerAccountID] as? Int == 65534 && attributes[.groupOwnerAccountID] as? Int == 65534
                && attributes[.posixPermissions] as? Int == 0o640, "\(attributes)")
        let lock = try FileManager.default.attributesOfItem(atPath: path + ".lock")
        #expect(lock[.ownerAccountID] as? Int == 65534, "the service's user can still take the lock: \(lock)")
    }

    /// On a running server: alice's token works on the API and the page, the trail says
    /// `admin-api:alice` and `admin-page:alice`; once removed, her next API call is a 401 and
    /// her page session shows the sign-in form again; the shared token is unaffected.
    @Test func theTrailNamesTheAdminAndARemovedTokenIsRefusedAtOnce() async throws {
        let directory = try Self.folder()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("admin-tokens").path
        let alice = SecretToken.generate()
        try AdminTokenFile.write([Self.entry("alice", alice)], to: path)
        let world = try await World { $0.admin.namedTokensPath = path }
        let api = AdminClient(server: world.server, token: alice)
        #expect(try await api.send(.GET, "/api/accounts?q=marius").status == 200)
        #expect(try await api.send(.POST, "/api/accounts/810002673899/suspend", body: "{\"reason\":\"test\"}",
                                   headers: [("Content-Type", "application/json")]).status == 200)
        var events = try await world.server.auditEvents().filter { $0.surface == "admin" }
        #expect(events.contains { $0.action == "accounts-listed" && $0.actorSubject == "admin-api:alice" }, "\(events)")
        #expect(events.contains { $0.action == "habilitation-withdrawn" && $0.actorSubject == "admin-api:alice" }, "\(events)")

        // The page, signed in with her token.
        let page = AdminClient(server: world.server, token: "")
        let (form, loginCookie, loginCSRF) = try await AdminTests.signInForm(page)
        let signedIn = try await page.send(.POST, "/connexion", body: "csrf=\(loginCSRF)&jeton=\(alice)", headers: form + [("Cookie", loginCookie)], authorization: "")
        #expect(signedIn.status == 303)
        let session = [("Cookie", try #require(signedIn.headers.first(name: "Set-Cookie")?.split(separator: ";").first.map(String.init)))]
        let landing = try #require(signedIn.headers.first(name: "Location"))
        let search = try await page.send(.GET, landing + "&q=jules", headers: session, authorization: "")
        #expect(search.status == 200 && search.body.contains("Rétablir"), "suspended above: the page offers to restore")
        let action = try #require(search.body.firstMatch(of: /action="(\/comptes\/[^"]+\/retablir)"/).map { String($0.1) })
        let csrf = try #require(search.body.firstMatch(of: /name="csrf" value="([^"]+)"/).map { String($0.1) })
        #expect(try await page.send(.POST, action, body: "csrf=\(csrf)&q=jules", headers: form + session, authorization: "").status == 303)
        events = try await world.server.auditEvents().filter { $0.surface == "admin" }
        for action in ["admin-sign-in", "accounts-listed", "habilitation-restored"] {
            #expect(events.contains { $0.action == action && $0.actorSubject == "admin-page:alice" }, "\(action): \(events)")
        }

        // Removed: refused from the next request on, on the API and the page: a form posted
        // first (before any page load could end the session), then the page, in a second
        // session opened before the removal.
        let (secondForm, secondCookie, secondCSRF) = try await AdminTests.signInForm(page)
        let second = try await page.send(.POST, "/connexion", body: "csrf=\(secondCSRF)&jeton=\(alice)", headers: secondForm + [("Cookie", secondCookie)], authorization: "")
        let secondSession = [("Cookie", try #require(second.headers.first(name: "Set-Cookie")?.split(separator: ";").first.map(String.init)))]
        let secondLanding = try #require(second.headers.first(name: "Location"))
        let byAliceBefore = try await world.server.auditEvents().filter { $0.actorSubject?.hasSuffix(":alice") == true }.count
        try AdminTokenFile.write([], to: path)
        #expect(try await api.send(.GET, "/api/accounts?q=marius").status == 401)
        #expect(try await page.send(.POST, action, body: "csrf=\(csrf)&q=jules", headers: form + session, authorization: "").status == 403)
        let after = try await page.send(.GET, secondLanding + "&q=jules", headers: secondSession, authorization: "")
        #expect(after.body.contains("form-connexion") && !after.body.contains("Rétablir"), "the session ended with its token")
        let byAliceAfter = try await world.server.auditEvents().filter { $0.actorSubject?.hasSuffix(":alice") == true }.count
        #expect(byAliceAfter == byAliceBefore, "nothing done, nothing read in alice's name after the removal")
        // The shared token is another matter.
        let shared = AdminClient(server: world.server)
        #expect(try await shared.send(.GET, "/api/accounts?q=marius").status == 200)
        events = try await world.server.auditEvents().filter { $0.surface == "admin" }
        #expect(events.last { $0.action == "accounts-listed" }?.actorSubject == "admin-api", "the shared token is recorded as before")
        await api.shutdown()
        await page.shutdown()
        await shared.shutdown()
        await world.stop()
    }

    /// A `view` token reads (accounts, the trail) and changes nothing: every API action is a
    /// 403 naming the role, the page shows no form and refuses a forged post with a French
    /// page, each refusal is audited under the admin's name; the role changed in the file
    /// applies to the open page session at its next request, both ways.
    @Test func aViewTokenReadsAndChangesNothingAndARoleChangeAppliesAtTheNextRequest() async throws {
        let directory = try Self.folder()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("admin-tokens").path
        let carol = SecretToken.generate()
        try AdminTokenFile.write([Self.entry("carol", carol, role: .view)], to: path)
        let world = try await World { $0.admin.namedTokensPath = path }
        let api = AdminClient(server: world.server, token: carol)
        let shared = AdminClient(server: world.server)
        let listed = try await api.send(.GET, "/api/accounts?q=marius")
        #expect(listed.status == 200)
        let id = try #require(listed.body.firstMatch(of: /"id":"([^"]+)"/).map { String($0.1) }, "\(listed.body)")
        #expect(try await api.send(.GET, "/api/accounts/\(id)").status == 200)
        #expect(try await api.send(.GET, "/api/audit").status == 200)
        for action in ["suspend", "restore", "revoke-sessions", "unlock", "reset-second-factor"] {
            let refused = try await api.send(.POST, "/api/accounts/\(id)/\(action)", body: #"{"reason":"test"}"#)
            #expect(refused.status == 403 && refused.body.contains("role view"), "\(action): \(refused.status) \(refused.body)")
        }
        let erase = try await api.send(.POST, "/api/accounts/\(id)/erase", body: #"{"confirm":true}"#)
        #expect(erase.status == 403, "\(erase.body)")
        // Whatever the post carries (another type, another account): the role decides first,
        // and a script trying every account id gets one audit event a minute per route.
        let typed = try await api.send(.POST, "/api/accounts/\(id)/suspend", body: "x", headers: [("Content-Type", "text/plain")])
        #expect(typed.status == 403 && typed.body.contains("role view"), "\(typed.status) \(typed.body)")
        for other in ["no-such-account", "810002673899", "other"] {
            #expect(try await api.send(.POST, "/api/accounts/\(other)/suspend").status == 403)
        }
        #expect(try await shared.json("/api/accounts?filter=suspended")["accounts"] == .array([]), "nothing suspended")
        var events = try await world.server.auditEvents().filter { $0.surface == "admin" }
        let apiRefusals = events.filter { $0.action == "admin-action-refused" && $0.actorSubject == "admin-api:carol" }
        #expect(apiRefusals.count == 6 && apiRefusals.allSatisfy { $0.outcome == "role view" }
                && apiRefusals.contains { $0.detail == "POST /api/accounts/\(id)/suspend" }, "\(apiRefusals)")
        #expect(events.contains { $0.action == "accounts-listed" && $0.actorSubject == "admin-api:carol" })
        #expect(!events.contains { $0.actorSubject == "admin-api:carol" && $0.action.hasPrefix("habilitation") })

        // The page: the same search, no action form, a read-only notice.
        let page = AdminClient(server: world.server, token: "")
        let (form, loginCookie, loginCSRF) = try await AdminTests.signInForm(page)
        let signedIn = try await page.send(.POST, "/connexion", body: "csrf=\(loginCSRF)&jeton=\(carol)", headers: form + [("Cookie", loginCookie)], authorization: "")
        #expect(signedIn.status == 303)
        let session = [("Cookie", try #require(signedIn.headers.first(name: "Set-Cookie")?.split(separator: ";").first.map(String.init)))]
        let landing = try #require(signedIn.headers.first(name: "Location"))
        let search = try await page.send(.GET, landing + "&q=jules", headers: session, authorization: "")
        #expect(search.status == 200 && search.body.contains("compte-\(id)") && search.body.contains("lecture-seule"), "\(search.body)")
        #expect(!search.body.contains("/comptes/"), "no action form for a view token")
        let csrf = try #require(search.body.firstMatch(of: /name="csrf" value="([^"]+)"/).map { String($0.1) })
        // A post made by hand (the form is not shown, the server refuses it anyway).
        let forged = try await page.send(.POST, "/comptes/\(id)/suspendre", body: "csrf=\(csrf)&q=jules&motif=x", headers: form + session, authorization: "")
        #expect(forged.status == 403 && forged.body.contains("Action non autorisée") && forged.body.contains("Rien n’a été changé"), "\(forged.body)")
        let forgedErase = try await page.send(.POST, "/comptes/\(id)/effacer", body: "csrf=\(csrf)&q=jules&confirmation=EFFACER", headers: form + session, authorization: "")
        #expect(forgedErase.status == 403)
        #expect(try await page.send(.POST, "/comptes/other-id/suspendre", body: "csrf=\(csrf)&q=jules", headers: form + session, authorization: "").status == 403)
        #expect(try await shared.json("/api/accounts?filter=suspended")["accounts"] == .array([]), "nothing suspended")
        events = try await world.server.auditEvents().filter { $0.surface == "admin" }
        #expect(events.contains { $0.action == "admin-sign-in" && $0.outcome == "accepted role view" && $0.actorSubject == "admin-page:carol" })
        #expect(events.contains { $0.action == "admin-action-refused" && $0.actorSubject == "admin-page:carol" && $0.detail == "suspend \(id)" }, "\(events)")
        #expect(events.contains { $0.action == "admin-action-refused" && $0.actorSubject == "admin-page:carol" && $0.detail == "erase \(id)" })
        #expect(events.filter { $0.action == "admin-action-refused" && $0.actorSubject == "admin-page:carol" }.count == 2, "one a minute per action, whatever the account")

        // Promoted in the file: the same session may act at its next request.
        try AdminTokenFile.write([Self.entry("carol", carol, role: .manage)], to: path)
        let promoted = try await page.send(.GET, landing + "&q=jules", headers: session, authorization: "")
        #expect(promoted.body.contains("/comptes/\(id)/suspendre") && !promoted.body.contains("lecture-seule"))
        let suspended = try await page.send(.POST, "/comptes/\(id)/suspendre", body: "csrf=\(csrf)&q=jules&motif=x", headers: form + session, authorization: "")
        #expect(suspended.status == 303)
        #expect(try await api.send(.POST, "/api/accounts/\(id)/revoke-sessions").status == 200, "the API too")
        // A body trickled in across a demotion: the token is looked at again once it has come.
        let (parts, more) = AsyncStream.makeStream(of: ByteBuffer.self)
        let body = #"{"reason":"late"}"#
        var trickled = HTTPClientRequest(url: world.server.adminURL + "/api/accounts/\(id)/restore")
        trickled.method = .POST
        trickled.headers.add(name: "Authorization", value: "Bearer \(carol)")
        trickled.headers.add(name: "Content-Type", value: "application/json")
        trickled.body = .stream(parts, length: .known(Int64(body.utf8.count)))
        let client = OwnedHTTPClient(.init(redirectConfiguration: .disallow))
        async let answer = client.client.execute(trickled, timeout: .seconds(20))
        more.yield(ByteBuffer(string: String(body.prefix(5))))
        try await Task.sleep(for: .milliseconds(300))  // the headers past the gate's first look
        try AdminTokenFile.write([Self.entry("carol", carol, role: .view)], to: path)
        more.yield(ByteBuffer(string: String(body.dropFirst(5))))
        more.finish()
        let late = try await answer
        #expect(late.status.code == 403, "demoted while its body came: refused")
        _ = try await late.body.collect(upTo: 1 << 16)
        await client.shutdown()
        try AdminTokenFile.write([Self.entry("carol", carol, role: .manage)], to: path)
        events = try await world.server.auditEvents().filter { $0.surface == "admin" }
        #expect(events.contains { $0.action == "habilitation-withdrawn" && $0.actorSubject == "admin-page:carol" })
        // Demoted again: refused at once, the account left suspended.
        try AdminTokenFile.write([Self.entry("carol", carol, role: .view)], to: path)
        #expect(try await page.send(.POST, "/comptes/\(id)/retablir", body: "csrf=\(csrf)&q=jules", headers: form + session, authorization: "").status == 403)
        #expect(try await api.send(.POST, "/api/accounts/\(id)/restore").status == 403)
        let detail = try await shared.json("/api/accounts/\(id)")
        #expect(detail["suspension"] != nil && detail["suspension"] != .null, "still suspended: \(detail)")
        await api.shutdown()
        await page.shutdown()
        await shared.shutdown()
        await world.stop()
    }

    /// `--no-shared-admin-token`: the shared file's token opens nothing (API and page), the
    /// file is not created when absent, and the named tokens work as before.
    @Test func withoutTheSharedTokenOnlyNamedTokensOpenTheListener() async throws {
        let directory = try Self.folder()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("admin-tokens").path
        let sharedPath = directory.appendingPathComponent("admin.token").path
        let absentPath = directory.appendingPathComponent("absent.token").path
        let sharedToken = SecretToken.generate(), alice = SecretToken.generate()
        try AdminTokenFile.write([Self.entry("alice", alice)], to: path)
        #expect(FileManager.default.createFile(atPath: sharedPath, contents: Data((sharedToken + "\n").utf8), attributes: [.posixPermissions: 0o600]))
        let world = try await World {
            $0.admin.namedTokensPath = path
            $0.admin.tokenPath = sharedPath
            $0.admin.sharedToken = false
        }
        let shared = AdminClient(server: world.server, token: sharedToken)
        #expect(try await shared.send(.GET, "/api/accounts?q=marius").status == 401)
        let page = AdminClient(server: world.server, token: "")
        let (form, loginCookie, loginCSRF) = try await AdminTests.signInForm(page)
        let refused = try await page.send(.POST, "/connexion", body: "csrf=\(loginCSRF)&jeton=\(sharedToken)", headers: form + [("Cookie", loginCookie)], authorization: "")
        #expect(refused.status == 401 && refused.body.contains("Jeton incorrect") && !refused.body.contains("--admin-token-file"))
        let named = AdminClient(server: world.server, token: alice)
        #expect(try await named.send(.GET, "/api/accounts?q=marius").status == 200)
        #expect(try await eventually { world.server.logs.all.contains { $0.contains("shared admin token off") } })
        await shared.shutdown()
        await page.shutdown()
        await named.shutdown()
        await world.stop()
        #expect(!world.server.logs.all.contains { $0.contains("no admin token may act") }, "alice may manage")
        // Only a reader left: said at start, as nobody could act through the listener.
        try AdminTokenFile.write([Self.entry("alice", alice, role: .view)], to: path)
        let second = try await World {
            $0.admin.namedTokensPath = path
            $0.admin.tokenPath = absentPath
            $0.admin.sharedToken = false
        }
        #expect(!FileManager.default.fileExists(atPath: absentPath), "no shared token file made")
        #expect(try await eventually { second.server.logs.all.contains { $0.contains("no admin token may act") } })
        await second.stop()
    }
}
