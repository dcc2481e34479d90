import Accounts
import ArgumentParser
import Crypto
import Foundation
import Storage

/// The file of the vendor admins' own tokens (``AdminKeyring``): one line per admin,
/// `NAME sha256:HEX`. Only digests are written: the token is shown once, when it is made,
/// and a copy of the file (a backup) opens nothing.
enum AdminTokenFile {
    /// `admin-tokens` in the folder of the shared token's file.
    static func defaultPath(besides sharedTokenPath: String) -> String {
        URL(fileURLWithPath: sharedTokenPath).deletingLastPathComponent().appendingPathComponent("admin-tokens").path
    }

    /// The entries of `path`; none when it does not exist.
    static func read(_ path: String) throws -> [NamedAdminToken] {
        guard FileManager.default.fileExists(atPath: path) else { return [] }
        let bytes: [UInt8]
        do { bytes = try PrivateFile.readSecret(path: path, what: "the admin tokens file", allowGroupRead: true) } catch {
            throw AdminFailure(message: error.description)
        }
        do { return try NamedAdminToken.parse(String(decoding: bytes, as: UTF8.self), path: path) } catch {
            throw AdminFailure(message: "\(error)")
        }
    }

    static func write(_ entries: [NamedAdminToken], to path: String) throws {
        let header = "# Vendor admins' own tokens (account-server admin token add|remove|list): NAME sha256:HEX.\n"
        let text = header + entries.map { $0.line + "\n" }.joined()
        do {
            let folder = URL(fileURLWithPath: path).deletingLastPathComponent().path
            if !FileManager.default.fileExists(atPath: folder) {
                try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            }
            try PrivateFile.replace(path: path, contents: Array(text.utf8))
        } catch let failure as PrivateFile.Failure {
            throw AdminFailure(message: failure.description)
        }
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
            subcommands: [Add.self, Remove.self, List.self])

        struct FileOptions: ParsableArguments {
            @Option(help: "The named tokens file. Env: ACCOUNT_SERVER_ADMIN_TOKENS_FILE. Default: admin-tokens beside --admin-token-file (./data/admin.token)")
            var tokensFile: String?
            @Option(help: "Where the servers' shared token file is (only to find the default tokens file). Env: ACCOUNT_SERVER_ADMIN_TOKEN_FILE.")
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
            @Argument(help: "The admin's name as the audit trail shows it: letters, digits, . _ @ -, at most 64 (e.g. alice.martin).")
            var name: String

            func run() async throws {
                guard NamedAdminToken.isValidName(name) else {
                    throw AdminFailure(message: "\(name.debugDescription) is not a usable name: letters, digits, '.', '_', '@', '-', at most 64 characters, starting with a letter or digit")
                }
                let path = try await file.path()
                var entries = try AdminTokenFile.read(path)
                guard !entries.contains(where: { $0.name == name }) else {
                    throw AdminFailure(message: "\(path) already has a token for \(name): remove it first (account-server admin token remove \(name))")
                }
                let token = SecretToken.generate()
                entries.append(NamedAdminToken(name: name, digest: Array(SHA256.hash(data: Array(token.utf8)))))
                try AdminTokenFile.write(entries, to: path)
                var errors = FileHandle.standardError
                print("token for \(name) added to \(path); it is shown once, below, and kept nowhere in clear: give it to \(name) only", to: &errors)
                print(token)
            }
        }

        struct Remove: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "remove",
                abstract: "Revoke the token of the admin NAME: refused from their next request on, their admin page sessions ended.")
            @OptionGroup var file: FileOptions
            @Argument(help: "The admin's name.") var name: String

            func run() async throws {
                let path = try await file.path()
                var entries = try AdminTokenFile.read(path)
                guard entries.contains(where: { $0.name == name }) else {
                    throw AdminFailure(message: "\(path) has no token for \(name.debugDescription)")
                }
                entries.removeAll { $0.name == name }
                try AdminTokenFile.write(entries, to: path)
                var errors = FileHandle.standardError
                print("token for \(name) removed from \(path)", to: &errors)
            }
        }

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(commandName: "list", abstract: "The names that hold a token, one per line.")
            @OptionGroup var file: FileOptions

            func run() async throws {
                for entry in try AdminTokenFile.read(try await file.path()) { print(entry.name) }
            }
        }
    }
}
