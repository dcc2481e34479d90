import Accounts
import ArgumentParser
import Crypto
import Foundation
import Habilitation
import Storage

/// The file of the vendor admins' own tokens (``AdminKeyring``): one line per admin,
/// `NAME sha256:HEX`. Only digests are written: the token is shown once, when it is made,
/// and a copy of the file (a backup) opens nothing.
enum AdminTokenFile {
    /// `admin-tokens` in the folder of the shared token's file.
    static func defaultPath(besides sharedTokenPath: String) -> String {
        URL(fileURLWithPath: sharedTokenPath).deletingLastPathComponent().appendingPathComponent("admin-tokens").path
    }

    /// Who the file must belong to, and its mode: those of the file in place (root editing
    /// the service's file keeps it the service's), else of its folder's owner, `0600`. A file
    /// written as root and left root's would be unreadable to the server.
    static func ownership(of path: String) -> (owner: (uid_t, gid_t), mode: mode_t) {
        var status = stat()
        if stat(path, &status) == 0 {
            return ((status.st_uid, status.st_gid), status.st_mode & 0o640 | 0o600)
        }
        let folder = URL(fileURLWithPath: path).deletingLastPathComponent().path
        if stat(folder, &status) == 0 { return ((status.st_uid, status.st_gid), 0o600) }
        return ((geteuid(), getegid()), 0o600)
    }

    /// The entries of `path`; none when it does not exist.
    static func read(_ path: String) throws -> [NamedAdminToken] {
        guard FileManager.default.fileExists(atPath: path) else { return [] }
        do { return try NamedAdminToken.load(path, owner: ownership(of: path).owner) } catch {
            throw AdminFailure(message: error.description)
        }
    }

    static func write(_ entries: [NamedAdminToken], to path: String) throws {
        let header = "# Vendor admins' own tokens (account-server admin token add|role|remove|list): NAME sha256:HEX [view].\n"
            + "# A line without a role may manage (every action); one ending in view may only read.\n"
            + "# Rewritten whole by those commands: comments other than these are not kept.\n"
        let text = header + entries.map { $0.line + "\n" }.joined()
        let (owner, mode) = ownership(of: path)
        do throws(PrivateFile.Failure) {
            try PrivateFile.replace(path: path, contents: Array(text.utf8), mode: mode, owner: owner)
        } catch {
            throw AdminFailure(message: error.description)
        }
    }

    /// What a command changed, as the audit trail records it.
    struct Change {
        var action: String
        var outcome: String
        var detail: String
    }

    /// Runs `change` on the entries under an exclusive lock (`flock` on `PATH.lock`), so that
    /// two commands run at once do not lose each other's change (a revocation undone), and
    /// rewrites the file inside the transaction that appends the change's audit event
    /// (``VendorAdministration/recordAdminTokenChange(_:outcome:detail:actor:apply:)``): no
    /// change without its event. `change` returns nil when it changes nothing (nothing
    /// written, nothing recorded). On a failure the file is put back as it was.
    /// The folder must exist: a missing one means a path other than the servers' (a command
    /// run from another folder), where a token would be made that no server reads.
    @discardableResult
    static func update(_ path: String, recordingIn administration: VendorAdministration,
                       _ change: (inout [NamedAdminToken]) throws -> Change?) async throws -> Change? {
        let folder = URL(fileURLWithPath: path).deletingLastPathComponent().path
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder, isDirectory: &isFolder), isFolder.boolValue else {
            throw AdminFailure(message: "\(shown(folder)): no such folder; give --tokens-file with the path the servers read (their --admin-tokens-file)")
        }
        let lock = open(path + ".lock", O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard lock >= 0 else { throw AdminFailure(message: "\(path).lock: cannot open the lock file (\(String(cString: strerror(errno))))") }
        defer { close(lock) }
        // The lock file belongs to whoever owns the tokens file (root creating it for the
        // service must not lock the service's own user out of the commands).
        let (user, group) = ownership(of: path).owner
        if geteuid() == 0, user != 0 || group != 0 { _ = fchown(lock, user, group) }
        guard flock(lock, LOCK_EX) == 0 else { throw AdminFailure(message: "\(path).lock: cannot lock (\(String(cString: strerror(errno))))") }
        let before = try read(path)
        var after = before
        guard let record = try change(&after) else { return nil }
        let existed = FileManager.default.fileExists(atPath: path)
        let entries = after
        do {
            try await administration.recordAdminTokenChange(record.action, outcome: record.outcome, detail: record.detail + " in \(shown(path))",
                                                            actor: AdminCommand.actor) { try write(entries, to: path) }
        } catch {
            // The event not written, or the commit failed after the rewrite: the file as it was.
            if existed { try? write(before, to: path) } else { try? FileManager.default.removeItem(atPath: path) }
            throw AdminFailure(message: "nothing changed in \(shown(path)): the change could not be recorded in the audit trail (\(error))")
        }
        return record
    }

    /// The path as the operator should read it: absolute (a relative default depends on the
    /// folder the command was run from, which need not be the service's).
    static func shown(_ path: String) -> String {
        URL(fileURLWithPath: path).standardizedFileURL.path
    }
}

extension AdminCommand {
    /// `account-server admin token add|remove|list`: the vendor admins' own tokens, so that the
    /// audit trail names who acted (`admin-api:alice`) instead of "the admin". The running
    /// servers read the file again on their next admin request: no restart.
    struct Token: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "token",
            abstract: "Manage the vendor admins' own tokens (the audit trail names their holder); the servers see a change on their next admin request.",
            subcommands: [Add.self, Role.self, Remove.self, List.self])

        struct FileOptions: ParsableArguments {
            @Option(help: "The named tokens file. Env: ACCOUNT_SERVER_ADMIN_TOKENS_FILE. Default: admin-tokens beside --admin-token-file (./data/admin.token)")
            var tokensFile: String?
            @Option(help: "Where the servers' shared token file is (only to find the default tokens file). Env: ACCOUNT_SERVER_ADMIN_TOKEN_FILE. Default: ./data/admin.token")
            var adminTokenFile: String?

            func path() async throws -> String {
                var values = CommandLineValues()
                values.set("admin.tokens.file", tokensFile)
                values.set("admin.token.file", adminTokenFile)
                let settings = try await Settings.forOperatorTool(commandLine: values.values)
                return try settings.string("admin.tokens.file")
                    ?? AdminTokenFile.defaultPath(besides: try settings.string("admin.token.file") ?? "./data/admin.token")
            }
        }

        struct Add: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "add",
                abstract: "Make a token for the admin NAME: printed once on standard output, only its SHA-256 kept in the file.")
            @OptionGroup var file: FileOptions
            @OptionGroup var database: AdminCommand.DatabaseOptions
            @Argument(help: "The admin's name as the audit trail shows it: ASCII letters, digits, . _ @ -, at most 64, starting with a letter or digit (e.g. alice.martin). To replace a token: remove, then add.")
            var name: String
            @Option(help: "What the token may do: view (search and show accounts, export the audit trail) or manage (that, and every action: suspend, restore, revoke sessions, unlock, reset the second factor, erase). Required: the choice is the operator's.")
            var role: AdminRole

            func run() async throws {
                guard NamedAdminToken.isValidName(name) else {
                    throw AdminFailure(message: "\(name.debugDescription) is not a usable name: letters, digits, '.', '_', '@', '-', at most 64 characters, starting with a letter or digit")
                }
                let path = try await file.path()
                let administration = try await database.auditTrail()
                let token = SecretToken.generate()
                try await AdminTokenFile.update(path, recordingIn: administration) { entries in
                    guard !entries.contains(where: { $0.name == name }) else {
                        throw AdminFailure(message: "\(AdminTokenFile.shown(path)) already has a token for \(name): remove it first (account-server admin token remove \(name))")
                    }
                    entries.append(NamedAdminToken(name: name, digest: Array(SHA256.hash(data: Array(token.utf8))), role: role))
                    return .init(action: "admin-token-added", outcome: "role \(role.rawValue)", detail: name)
                }
                var errors = FileHandle.standardError
                print("token for \(name) (role \(role.rawValue)) added to \(AdminTokenFile.shown(path)) (the servers must read that file: --admin-tokens-file); "
                      + "it is printed once, on standard output, and kept nowhere in clear: give it to \(name) only", to: &errors)
                print(token)
            }
        }

        struct Role: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "role",
                abstract: "Change what the token of the admin NAME may do (view or manage), keeping the token: from their next request on, their open page sessions included.")
            @OptionGroup var file: FileOptions
            @OptionGroup var database: AdminCommand.DatabaseOptions
            @Argument(help: "The admin's name.") var name: String
            @Argument(help: "view or manage.") var role: AdminRole

            func run() async throws {
                let path = try await file.path()
                let administration = try await database.auditTrail()
                var before: AdminRole?
                try await AdminTokenFile.update(path, recordingIn: administration) { entries in
                    guard let index = entries.firstIndex(where: { $0.name == name }) else {
                        throw AdminFailure(message: "\(AdminTokenFile.shown(path)) has no token for \(name.debugDescription)")
                    }
                    let previous = entries[index].role
                    before = previous
                    guard previous != role else { return nil }
                    entries[index].role = role
                    return .init(action: "admin-token-role-changed", outcome: "role \(role.rawValue) (was \(previous.rawValue))", detail: name)
                }
                var errors = FileHandle.standardError
                print(before == role ? "\(name) already had the role \(role.rawValue) in \(AdminTokenFile.shown(path)): nothing changed"
                                     : "\(name) now has the role \(role.rawValue) (was \(before?.rawValue ?? "-")) in \(AdminTokenFile.shown(path))", to: &errors)
            }
        }

        struct Remove: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "remove",
                abstract: "Revoke the token of the admin NAME: refused from their next request on, their admin page sessions ended.")
            @OptionGroup var file: FileOptions
            @OptionGroup var database: AdminCommand.DatabaseOptions
            @Argument(help: "The admin's name.") var name: String

            func run() async throws {
                let path = try await file.path()
                let administration = try await database.auditTrail()
                try await AdminTokenFile.update(path, recordingIn: administration) { entries in
                    guard let entry = entries.first(where: { $0.name == name }) else {
                        throw AdminFailure(message: "\(AdminTokenFile.shown(path)) has no token for \(name.debugDescription)")
                    }
                    entries.removeAll { $0.name == name }
                    return .init(action: "admin-token-removed", outcome: "role \(entry.role.rawValue)", detail: name)
                }
                var errors = FileHandle.standardError
                print("token for \(name) removed from \(AdminTokenFile.shown(path))", to: &errors)
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(commandName: "list", abstract: "The names that hold a token and their role, one per line (NAME ROLE).")
            @OptionGroup var file: FileOptions

            func run() async throws {
                let path = try await file.path()
                var errors = FileHandle.standardError
                print("\(AdminTokenFile.shown(path))\(FileManager.default.fileExists(atPath: path) ? "" : " (absent: no named token)")", to: &errors)
                for entry in try AdminTokenFile.read(path) { print("\(entry.name) \(entry.role.rawValue)") }
            }
        }
    }
}

extension AdminRole: ExpressibleByArgument {}

extension AdminCommand.DatabaseOptions {
    /// The audit trail's side of `admin token add|role|remove` (the servers' `--database`):
    /// opened before anything is made or changed, so that a database out of reach refuses the
    /// command with nothing done.
    func auditTrail() async throws -> VendorAdministration {
        do { return try await administration() } catch {
            throw AdminFailure(message: "the database, where the change is recorded in the audit trail, cannot be opened (\(error)): give --database as the servers have it; nothing changed")
        }
    }
}
