import Accounts
import ArgumentParser
import Crypto
import Foundation
import Storage
import Habilitation

/// `account-server admin …`: the vendor admin's operations directly on the database (safe
/// while the server runs: SQLite WAL, one transaction per change). The same code as the
/// admin HTTP API (``VendorAdministration``); every change is audited with the Unix user.
struct AdminCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "admin",
        abstract: "Vendor admin: find accounts, suspend or restore the habilitation, revoke sessions, unlock, reset a second factor, erase a deactivated account, export or archive the audit trail.",
        subcommands: [List.self, Show.self, Suspend.self, Restore.self, RevokeSessions.self, Unlock.self, ResetSecondFactor.self,
                      Erase.self, EraseDeactivated.self, ForgetSecretKey.self, Audit.self, ArchiveAudit.self, Token.self]
    )

    struct DatabaseOptions: ParsableArguments {
        @Option(help: "SQLite database file or postgres:// URL. Env: ACCOUNT_SERVER_DATABASE. Default: ./data/account-server.sqlite")
        var database: String?

        func open() async throws -> AccountDatabase {
            try await StorageLocation.openExisting(try await Settings.database(database))
        }

        func administration() async throws -> VendorAdministration {
            var sessions = SessionConfiguration()
            sessions.idleTimeout = TimeInterval(try ServeCommand.durationSeconds(try await Settings.forOperatorTool(), "session.idle.minutes",
                                                                                 default: Int(sessions.idleTimeout / 60), unit: 60))
            return VendorAdministration(database: try await open(), sessionConfiguration: sessions)
        }
    }

    /// The operator, as the audit trail records them: the login of the process's real user
    /// id, never `$USER` (anyone could write `USER=colleague` before the command). Run
    /// through sudo (`sudo -u account-server account-server admin …`, the database being the
    /// service account's), the user sudo names is added: `cli:account-server (sudo by alice)`.
    /// That part is what the environment says (sudo's own log is the proof of it); the login
    /// before it is the system's.
    static var actor: AuditActor { AuditActor(subject: "cli:\(operatorName())", serial: nil, address: "local") }

    static func operatorName(uid: uid_t = getuid(), environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        let name = login(of: uid)
        guard let sudo = environment["SUDO_USER"], !sudo.isEmpty, sudo != name else { return name }
        return "\(name) (sudo by \(String(sudo.prefix(64))))"
    }

    static func login(of uid: uid_t) -> String {
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 4096)
        // `pw_name` points into the buffer: read while the buffer is pinned.
        let name = buffer.withUnsafeMutableBufferPointer { storage -> String? in
            guard let base = storage.baseAddress, getpwuid_r(uid, &entry, base, storage.count, &result) == 0, result != nil,
                  let name = entry.pw_name else { return nil }
            return String(cString: name)
        }
        return name ?? "uid \(uid)"
    }

    static func emit(_ value: JSONValue) {
        var output = FileHandle.standardOutput
        print(JSONWriter().string(value), to: &output)
    }

    /// On standard error (the JSON on standard output stays what scripts read): the erasure is
    /// done, but SQLite's `-wal` file may still hold the pages from before it.
    static func warnIfHeldBack(_ log: LogScrub) {
        let why: String
        switch log {
        case .heldBack: why = "another connection (a reader of an older snapshot: a backup or an export running beside; a writer; a checkpoint) held the database's log back"
        case .failed: why = "scrubbing the database's log failed (see the server's log and the disk)"
        case .truncated, .notApplicable: return
        }
        var errors = FileHandle.standardError
        print("warning: erased, but \(why): older copies of the erased rows stay in the -wal file until SQLite writes over them, "
              + "the server stops cleanly, or erase-deactivated runs again (it scrubs the log even when it has nothing to erase)", to: &errors)
    }

    static func resolve(_ administration: VendorAdministration, _ reference: String) async throws -> String {
        guard let id = try await administration.resolve(reference) else {
            throw AdminFailure(message: "no account matches \(reference) (give its id, IDNPS, SAS technical id or e-mail)")
        }
        return id
    }

    /// For audit exports: an erased account's id too, as long as the trail names it.
    static func resolveInTrail(_ administration: VendorAdministration, _ reference: String) async throws -> String {
        guard let id = try await administration.resolveInTrail(reference) else {
            throw AdminFailure(message: "no account matches \(reference) (give its id, IDNPS, SAS technical id or e-mail; an erased account by its id)")
        }
        return id
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List or search accounts (name, e-mail, id, identifier).")
        @OptionGroup var options: DatabaseOptions
        @Argument(help: "Text to search for; all accounts when absent.") var query: String?
        @Option(help: "all, suspended, inactive or locked.") var filter: String = "all"
        @Option(help: "At most this many accounts, 1 to 1000.") var limit: Int = 50
        @Flag(help: "One JSON object per line instead of a table.") var json = false

        func validate() throws {
            guard (1...AdminController.listMaximum).contains(limit) else { throw ValidationError("--limit must be between 1 and \(AdminController.listMaximum)") }
        }

        func run() async throws {
            guard let filter = AccountFilter(rawValue: filter) else { throw ValidationError("--filter must be all, suspended, inactive or locked") }
            let administration = try await options.administration()
            let accounts = try await administration.search(query, filter: filter, limit: limit)
            await AdminCommand.traceRead(administration, "accounts-listed", outcome: "\(accounts.count) account(s)", accountID: nil,
                                         detail: AdminController.searchDetail(query, filter: filter))
            if json {
                accounts.forEach { AdminCommand.emit(AdminJSON.listing($0)) }
                return
            }
            print("ID                                    NAME                          NATIONAL ID     SAS TECHNICAL ID                      STATE")
            for account in accounts {
                var state = [account.active ? "active" : "deactivated-by-sas"]
                if account.suspension != nil { state.append("SUSPENDED") }
                if let locked = account.lockedUntil, locked > Date() { state.append("locked") }
                state.append("\(account.liveSessions) live session(s)")
                // Escaped as in the logs: a name stored before control characters were refused
                // must not act on the operator's terminal or fake a row.
                let name = LogLineHandler.escaped("\(account.givenName) \(account.familyName)")
                print([account.accountID.padding(toLength: 38, withPad: " ", startingAt: 0), name.padding(toLength: 30, withPad: " ", startingAt: 0),
                       (account.nationalID ?? "-").padding(toLength: 16, withPad: " ", startingAt: 0),
                       (account.sasTechnicalID ?? "-").padding(toLength: 38, withPad: " ", startingAt: 0), state.joined(separator: ", ")].joined())
            }
            if accounts.count == limit {
                // On standard error: the table stays what it was for scripts reading it.
                var errors = FileHandle.standardError
                print("(\(limit) shown; more may match: refine the search or raise --limit, up to \(AdminController.listMaximum))", to: &errors)
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "One account: identifier history, sessions, audit (JSON).")
        @OptionGroup var options: DatabaseOptions
        @Argument(help: "Account id, IDNPS, SAS technical id or e-mail.") var account: String

        func run() async throws {
            let administration = try await options.administration()
            let id = try await AdminCommand.resolve(administration, account)
            guard let detail = try await administration.detail(accountID: id) else { throw AdminFailure(message: "no account \(id)") }
            await AdminCommand.traceRead(administration, "account-viewed", outcome: "shown", accountID: id, detail: nil)
            var output = FileHandle.standardOutput
            print(JSONWriter(pretty: true).string(AdminJSON.detail(detail)), to: &output)
        }
    }

    /// One action on one account: resolve it, act, print the result as JSON.
    static func act(_ name: String, options: DatabaseOptions, account: String,
                    _ operation: (VendorAdministration, String) async throws -> AdminActionResult?) async throws {
        let administration = try await options.administration()
        let id = try await resolve(administration, account)
        guard let result = try await operation(administration, id) else { throw AdminFailure(message: "no account \(id)") }
        emit(AdminJSON.action(name, result))
    }

    struct Suspend: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "suspend",
                                                        abstract: "Withdraw the regulator habilitation (every session, from its next request; a later SAS active:true does not lift it).")
        @OptionGroup var options: DatabaseOptions
        @Argument(help: "Account id, IDNPS, SAS technical id or e-mail.") var account: String
        @Option(help: "Why (kept with the suspension and in the audit trail).") var reason: String?

        func run() async throws {
            try await AdminCommand.act("suspend", options: options, account: account) {
                try await $0.suspend(accountID: $1, reason: reason, actor: AdminCommand.actor)
            }
        }
    }

    struct Restore: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "restore", abstract: "Lift a vendor suspension (the SAS's active still applies).")
        @OptionGroup var options: DatabaseOptions
        @Argument(help: "Account id, IDNPS, SAS technical id or e-mail.") var account: String
        @Option(help: "Why (in the audit trail).") var reason: String?

        func run() async throws {
            try await AdminCommand.act("restore", options: options, account: account) {
                try await $0.restore(accountID: $1, reason: reason, actor: AdminCommand.actor)
            }
        }
    }

    struct RevokeSessions: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "revoke-sessions", abstract: "End every session, sign-in under way and password reset link of the account.")
        @OptionGroup var options: DatabaseOptions
        @Argument(help: "Account id, IDNPS, SAS technical id or e-mail.") var account: String
        @Option(help: "Why (in the audit trail).") var reason: String?

        func run() async throws {
            try await AdminCommand.act("revoke-sessions", options: options, account: account) {
                try await $0.revokeSessions(accountID: $1, reason: reason, actor: AdminCommand.actor)
            }
        }
    }

    struct Unlock: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "unlock", abstract: "Clear a sign-in lockout.")
        @OptionGroup var options: DatabaseOptions
        @Argument(help: "Account id, IDNPS, SAS technical id or e-mail.") var account: String
        @Option(help: "Why (in the audit trail).") var reason: String?

        func run() async throws {
            try await AdminCommand.act("unlock", options: options, account: account) {
                try await $0.unlock(accountID: $1, reason: reason, actor: AdminCommand.actor)
            }
        }
    }

    struct ResetSecondFactor: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "reset-second-factor",
            abstract: "A lost phone: remove the account's TOTP and recovery codes, require a new password through a reset link, end its sessions; the sign-in after the reset enrols a new TOTP.")
        @OptionGroup var options: DatabaseOptions
        @Argument(help: "Account id, IDNPS, SAS technical id or e-mail.") var account: String
        @Option(help: "Why (in the audit trail).") var reason: String?

        func run() async throws {
            try await AdminCommand.act("reset-second-factor", options: options, account: account) {
                try await $0.resetSecondFactor(accountID: $1, reason: reason, actor: AdminCommand.actor)
            }
        }
    }

    struct Erase: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "erase",
            abstract: "Erase an account the SAS has deactivated (GDPR right to erasure, end of retention): the account, its identifiers and their history, credentials, CGU acceptances, sessions and queued mails; the audit trail keeps its events.")
        @OptionGroup var options: DatabaseOptions
        @Argument(help: "The account id (as admin list and show give it): an irreversible action names its account exactly, never by an e-mail or identifier another account may share.") var account: String
        @Option(help: "Why (in the audit trail; no health data).") var reason: String?
        @Flag(help: "Required: the erasure cannot be undone (restoring a backup would bring the account back).") var confirm = false

        func run() async throws {
            guard confirm else {
                throw AdminFailure(message: "erase deletes the account and what it holds for good: give --confirm")
            }
            let administration = try await options.administration()
            let id = account.trimmingCharacters(in: .whitespaces)
            switch try await administration.erase(accountID: id, reason: reason, actor: AdminCommand.actor) {
            case nil: throw AdminFailure(message: "no account with the id \(id) (erase takes the account id that admin list and show give, nothing else)")
            case .stillActive?:
                throw AdminFailure(message: "the SAS has account \(id) active: only an account it deactivated (INT_R02 active:false) can be erased; nothing changed")
            case .erased(let erased, let sessions, let log)?:
                AdminCommand.emit(AdminJSON.erasure(accountID: id, erased, sessions: sessions, log: log))
                AdminCommand.warnIfHeldBack(log)
            }
        }
    }

    struct EraseDeactivated: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "erase-deactivated",
            abstract: "Erase every account the SAS deactivated before a date (the retention of deactivated accounts), oldest first; prints each erasure as a JSON line.")
        @OptionGroup var options: DatabaseOptions
        @Option(help: "Accounts whose deactivation is older than this day (YYYY-MM-DD, midnight UTC) or instant (RFC 3339).") var before: String
        @Option(help: "Why (in each audit event; no health data).") var reason: String?
        @Flag(help: "List the accounts that would be erased (id, deactivation time), erase nothing.") var dryRun = false
        @Flag(help: "Required (without --dry-run): the erasures cannot be undone.") var confirm = false

        func validate() throws {
            _ = try ArchiveAudit.checkedCutoff(before)
        }

        func run() async throws {
            let cutoff = ArchiveAudit.cutoff(before)!
            if dryRun {
                let accounts = try await options.administration().deactivated(before: cutoff)
                for account in accounts {
                    AdminCommand.emit(.object(["id": .string(account.id), "deactivated_at": .string(AuditLog.timestamp(account.at))]))
                }
                AdminCommand.emit(.object(["action": .string("erase-deactivated"), "dry_run": .bool(true), "accounts": .number(String(accounts.count))]))
                return
            }
            guard confirm else {
                throw AdminFailure(message: "erase-deactivated deletes every account the SAS deactivated before \(before), for good: give --confirm (or --dry-run to list them)")
            }
            let result = try await options.administration().eraseDeactivated(before: cutoff, reason: reason, actor: AdminCommand.actor) { id, erased, sessions in
                AdminCommand.emit(AdminJSON.erasure(accountID: id, erased, sessions: sessions))
            }
            // Last, a line that says how many: also when none (a timer's log shows it ran).
            AdminCommand.emit(.object(["action": .string("erase-deactivated"), "erased": .number(String(result.erased)),
                                       "database_log": .string(result.log.rawValue)]))
            AdminCommand.warnIfHeldBack(result.log)
        }
    }

    struct ForgetSecretKey: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "forget-secret-key",
            abstract: "The secret key file is lost for good: discard what it sealed (every TOTP, recovery code and queued mail) and end every session, so that the next start creates a new key. Stop every instance first.")
        @OptionGroup var options: DatabaseOptions
        @Flag(help: "Required: every regulator who had a second factor then chooses a new password through « Mot de passe oublié » and enrols a new TOTP.") var confirm = false

        func run() async throws {
            guard confirm else {
                throw AdminFailure(message: "forget-secret-key discards every TOTP secret, recovery code and queued mail: give --confirm if the key file is lost for good")
            }
            let result = try await options.administration().forgetSecretKey(actor: AdminCommand.actor)
            AdminCommand.emit(.object([
                "action": .string("forget-secret-key"),
                "totpSecrets": .number(String(result.discarded.totpSecrets)),
                "recoveryCodes": .number(String(result.discarded.recoveryCodes)),
                "queuedMails": .number(String(result.discarded.queuedMails)),
                "passwordsToReset": .number(String(result.discarded.passwordsToReset)),
                "sessions": .number(String(result.sessions)),
            ]))
        }
    }

    struct Audit: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "audit", abstract: "Export the audit trail as JSON lines, oldest first.")
        @OptionGroup var options: DatabaseOptions
        @Option(help: "Only this account (id, IDNPS, SAS technical id or e-mail).") var account: String?
        @Option(help: "Only events after this sequence number.") var after: Int64 = 0
        @Option(help: "At most this many events.") var limit: Int?

        func validate() throws {
            try AuditCommand.validate(after: after, limit: limit)
        }

        func run() async throws {
            let administration = try await options.administration()
            var accountID: String?
            if let account { accountID = try await AdminCommand.resolveInTrail(administration, account) }
            try await AdminCommand.exportTrail(administration, accountID: accountID, after: after, limit: limit)
        }
    }
}

extension AdminCommand {
    /// A read of personal data through the command line, in the trail as the API's and the
    /// page's are (actor `cli:<login>`, address `local`): who looked, at what, when. A trail
    /// that cannot be written (a read-only copy of the database, a standby) is said on standard
    /// error and does not stop the read: whoever runs these reads the database itself, which
    /// no trail can stop; the trail records the reads of those who go through the tools.
    static func traceRead(_ administration: VendorAdministration, _ action: String, outcome: String, accountID: String?, detail: String?) async {
        do {
            try await administration.recordRead(action, outcome: outcome, accountID: accountID, detail: detail, actor: actor, requestID: nil)
        } catch {
            var errors = FileHandle.standardError
            print("warning: this read is not recorded in the audit trail (\(error))", to: &errors)
        }
    }

    /// `admin audit` and `audit`: the trail as JSON lines; an export from the start is traced
    /// (`audit-exported`, with the count it is about to print) before its first line, so an
    /// export cut short (`| head`, Ctrl-C) is recorded too; an export from `--after N` is not:
    /// a tailer polling for new events would otherwise read its own event at every poll. The
    /// trace comes after the export's horizon: it is not among the events printed.
    static func exportTrail(_ administration: VendorAdministration, accountID: String?, after: Int64, limit: Int?) async throws {
        let trace: ((Int) async throws -> Void)? = after != 0 ? nil : { count in
            await traceRead(administration, "audit-exported", outcome: "\(count) event(s)", accountID: accountID,
                            detail: "after 0, limit \(limit.map(String.init) ?? "none"), command line")
        }
        try await administration.forEachAuditEvent(accountID: accountID, afterSeq: after, limit: limit, starting: trace) { event in
            AdminCommand.emit(event.jsonValue)
        }
    }
}

extension AdminCommand {
    /// `admin archive-audit --before DATE --to FILE --confirm`: the trail's events older than
    /// DATE moved to a JSON-lines file (written under a temporary name, 0600, synced, read
    /// back through the same descriptor and checked by line count and SHA-256, then linked to
    /// FILE, which must not exist), then removed from the database with an `audit-archived`
    /// event naming the file and its SHA-256 (``AuditArchive``). On PostgreSQL, with the
    /// schema owner's URL.
    struct ArchiveAudit: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "archive-audit",
            abstract: "Move the audit events older than a date to a file, then remove them from the database (the trail's retention; PostgreSQL: as the schema owner).")
        @OptionGroup var options: DatabaseOptions
        @Option(help: "Archive the events dated before this day (YYYY-MM-DD, midnight UTC) or instant (RFC 3339).") var before: String
        @Option(help: "The archive to create (JSON lines, 0600); an existing file is refused.") var to: String
        @Flag(help: "Required: the events leave the database for the file (keep it as your policy says).") var confirm = false

        /// A day (`2025-01-31`, midnight UTC) or an RFC 3339 instant (`2025-01-31T08:00:00Z`,
        /// `…T08:00:00.250+01:00`, `t`/`z` in either case), read strictly: a date that does not
        /// exist (`2024-02-30`, `24:00`, `:60`) or a loose form (`2024-6-1`) is refused, never
        /// moved to a neighbouring one, since the commands that take it cannot be undone.
        static func cutoff(_ text: String) -> Date? {
            let pattern = #/^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(Z|([+-])(\d{2}):(\d{2})))?$/#
            guard let match = text.uppercased().wholeMatch(of: pattern) else { return nil }
            var components = DateComponents(year: Int(match.1), month: Int(match.2), day: Int(match.3),
                                            hour: match.4.flatMap { Int($0) } ?? 0, minute: match.5.flatMap { Int($0) } ?? 0,
                                            second: match.6.flatMap { Int($0) } ?? 0)
            var offset = 0
            if match.4 != nil {
                guard match.8 != nil else { return nil }
                if let sign = match.9, let hours = match.10.flatMap({ Int($0) }), let minutes = match.11.flatMap({ Int($0) }) {
                    guard hours <= 23, minutes <= 59 else { return nil }
                    offset = (sign == "-" ? -1 : 1) * (hours * 3600 + minutes * 60)
                }
            }
            var calendar = Calendar(identifier: .gregorian)
            calendar.timeZone = TimeZone(secondsFromGMT: offset)!
            components.calendar = calendar
            components.timeZone = calendar.timeZone
            guard components.isValidDate(in: calendar), let date = calendar.date(from: components) else { return nil }
            let fraction = match.7.flatMap { Double("0" + $0) } ?? 0
            return date.addingTimeInterval(fraction)
        }

        /// `--before` as both date-taking commands check it: a strict date, not in the future.
        static func checkedCutoff(_ before: String) throws -> Date {
            guard let cutoff = cutoff(before) else { throw ValidationError("--before must be a day (2025-01-31) or an RFC 3339 instant (2025-01-31T08:00:00Z)") }
            guard cutoff <= Date() else { throw ValidationError("--before is in the future") }
            return cutoff
        }

        func validate() throws {
            _ = try Self.checkedCutoff(before)
        }

        func run() async throws {
            guard confirm else {
                throw AdminFailure(message: "archive-audit removes the archived events from the database: give --confirm")
            }
            let cutoff = Self.cutoff(before)!
            let archive = AuditArchive(database: try await options.open())
            guard try await archive.mayRemove() else {
                throw AdminFailure(message: "this role may not remove audit events: give --database the schema owner's URL (the one `account-server migrate` uses); nothing was written")
            }
            guard let range = try await archive.range(before: cutoff) else {
                AdminCommand.emit(.object(["action": .string("archive-audit"), "archived": .number("0")]))
                return
            }
            let file = try ArchiveFile(path: to)
            var written = 0
            var seqSum: Int64 = 0
            let check: (lines: Int, digest: String)
            do {
                try await archive.forEachEvent(in: range) { event in
                    try file.append(Array(JSONWriter().string(event.jsonValue).utf8) + [0x0A])
                    written += 1
                    seqSum &+= event.seq ?? 0
                }
                guard written == range.count, seqSum == range.seqSum else {
                    throw AdminFailure(message: "the trail changed during the export (\(written) event(s) read, \(range.count) expected): nothing was removed; archive again")
                }
                check = try file.finish()
            } catch {
                file.discard()
                throw error
            }
            guard check.lines == written, check.digest == file.digest else {
                throw AdminFailure(message: "the archive \(to) does not read back as written (\(check.lines) of \(written) line(s)): nothing was removed")
            }
            let name = URL(fileURLWithPath: to).lastPathComponent
            let record = AuditEvent(at: Date(), surface: "admin", action: "audit-archived", outcome: "\(written) event(s) removed", actor: AdminCommand.actor,
                                    requestID: nil, identifier: nil, accountID: nil, changes: [],
                                    detail: "\(written) event(s) from seq \(range.firstSeq) to \(range.lastSeq), the newest dated \(AuditLog.timestamp(range.newest)), "
                                        + "before the cut-off \(AuditLog.timestamp(cutoff)); archive \(name), SHA-256 \(file.digest)")
            do {
                try await archive.remove(range, record: record)
            } catch {
                throw AdminFailure(message: "\(error) (the file \(to) holds the export; unless the error says the commit's outcome is unknown, the events are still in the database too)")
            }
            AdminCommand.emit(.object(["action": .string("archive-audit"), "archived": .number(String(written)),
                                       "first_seq": .number(String(range.firstSeq)), "last_seq": .number(String(range.lastSeq)),
                                       "newest": .string(AuditLog.timestamp(range.newest)), "file": .string(to), "sha256": .string(file.digest)]))
        }
    }

    /// The archive being written: under a temporary name beside the target, created
    /// exclusively at 0600 and hashed as it is written; ``finish()`` syncs it, reads it back
    /// through the same descriptor, and links it to the target name (which must not exist),
    /// then syncs the folder. A run killed meanwhile leaves a `.partial` file, never a file
    /// under the target name that could be taken for a whole archive.
    final class ArchiveFile {
        let path: String
        let staging: String
        private let descriptor: Int32
        private var hash = SHA256()
        private var closed = false
        private(set) var digest = ""

        init(path: String) throws {
            self.path = path
            let target = URL(fileURLWithPath: path)
            staging = target.deletingLastPathComponent().appendingPathComponent(".\(target.lastPathComponent).partial-\(getpid())").path
            var status = stat()
            guard lstat(path, &status) != 0 && errno == ENOENT else {
                throw AdminFailure(message: "cannot create \(path): it exists (an existing file is never replaced)")
            }
            let fd = open(staging, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            guard fd >= 0 else {
                throw AdminFailure(message: "cannot create \(staging): \(String(cString: strerror(errno)))")
            }
            descriptor = fd
        }

        func append(_ bytes: [UInt8]) throws {
            hash.update(data: bytes)
            var offset = 0
            while offset < bytes.count {
                let count = bytes[offset...].withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { throw AdminFailure(message: "writing \(staging): \(String(cString: strerror(errno)))") }
                offset += count
            }
        }

        /// Syncs, reads back, links into place; returns what was read back.
        func finish() throws -> (lines: Int, digest: String) {
            digest = hash.finalize().map { String(format: "%02x", $0) }.joined()
            guard fsync(descriptor) == 0 else { throw AdminFailure(message: "syncing \(staging): \(String(cString: strerror(errno)))") }
            var reread = SHA256()
            var lines = 0
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            var offset: off_t = 0
            while true {
                let count = buffer.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, $0.count, offset) }
                if count < 0 && errno == EINTR { continue }
                guard count >= 0 else { throw AdminFailure(message: "reading back \(staging): \(String(cString: strerror(errno)))") }
                if count == 0 { break }
                reread.update(data: buffer[0..<count])
                lines += buffer[0..<count].reduce(0) { $0 + ($1 == 0x0A ? 1 : 0) }
                offset += off_t(count)
            }
            closed = true
            guard close(descriptor) == 0 else { throw AdminFailure(message: "closing \(staging): \(String(cString: strerror(errno)))") }
            guard link(staging, path) == 0 else {
                throw AdminFailure(message: "cannot create \(path): \(String(cString: strerror(errno))) (an existing file is never replaced)")
            }
            unlink(staging)
            let folder = open(URL(fileURLWithPath: path).deletingLastPathComponent().path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard folder >= 0, fsync(folder) == 0 else {
                throw AdminFailure(message: "syncing the folder of \(path): \(String(cString: strerror(errno)))")
            }
            close(folder)
            return (lines, reread.finalize().map { String(format: "%02x", $0) }.joined())
        }

        /// A failed export leaves nothing behind to be taken for an archive.
        func discard() {
            if !closed { close(descriptor) }
            closed = true
            unlink(staging)
            // (If the link was made before a later step failed, the target holds the whole,
            // checked export: it stays, and nothing was removed from the database.)
        }
    }
}

/// A refusal of an admin command, printed without a stack trace; exit status 1.
struct AdminFailure: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}
