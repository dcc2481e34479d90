import Accounts
import Crypto
import Foundation
import Logging
import Storage
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Who an admin request is: the holder of the shared token (`--admin-token-file`), or a
/// vendor admin by name, through a token of their own (`--admin-tokens-file`, managed with
/// `account-server admin token`). The audit trail records the name
/// (`admin-api:alice`, `admin-page:alice`): with one shared token it could only say that
/// *an* admin acted.
struct AdminIdentity: Sendable, Equatable {
    /// nil: the shared token.
    let name: String?
    /// What the token may do, as the file says at this request (the shared token: manage).
    let role: AdminRole
    /// The SHA-256 of the token presented: a page session stays bound to the very token it
    /// was opened with, so a token removed and issued again under the same name does not
    /// keep the old one's sessions alive.
    fileprivate let digest: [UInt8]

    /// The audit actor's subject on `surface` (`admin-api`, `admin-page`).
    func subject(via surface: String) -> String {
        name.map { "\(surface):\($0)" } ?? surface
    }
}

/// What an admin token may do, Keycloak's `view-users` / `manage-users` split: an auditor, a
/// support desk or a monitoring script reads accounts and the audit trail without being able
/// to withdraw a habilitation or erase an account.
enum AdminRole: String, Sendable, CaseIterable {
    /// Search and show accounts, export the audit trail (every read audited, as for any admin).
    case view
    /// Everything `view` may, and every action: suspend, restore, revoke sessions, unlock,
    /// reset the second factor, erase.
    case manage
}

/// One line of the named tokens file: `NAME sha256:HEX` (may manage, as every line written
/// before roles existed) or `NAME sha256:HEX view` (may only read). A `manage` line is written
/// without its role so that a server of an earlier version, during a rolling upgrade, still
/// reads the file; one with `view` makes such a server refuse the whole file (every named
/// token, fail closed) rather than take a reader for a manager.
struct NamedAdminToken: Sendable, Equatable {
    var name: String
    var digest: [UInt8]
    var role: AdminRole = .manage

    /// Names as an audit trail and a log show them safely: letters, digits, `.`, `_`, `@`,
    /// `-`; at most 64 characters, starting with a letter or digit.
    static func isValidName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, name.unicodeScalars.count <= 64,
              ("0"..."9").contains(first) || ("a"..."z").contains(first) || ("A"..."Z").contains(first) else { return false }
        return name.unicodeScalars.allSatisfy { scalar in
            scalar.isASCII && (("a"..."z").contains(scalar) || ("A"..."Z").contains(scalar) || ("0"..."9").contains(scalar) || "._@-".unicodeScalars.contains(scalar))
        }
    }

    var line: String {
        "\(name) sha256:\(digest.map { String(format: "%02x", $0) }.joined())" + (role == .manage ? "" : " \(role.rawValue)")
    }

    /// The entries of the file at `path`, read with the key files' checks (not a secret:
    /// digests of 256-bit tokens; but whoever can write it is an admin), group read allowed.
    /// `owner`: see ``PrivateFile/readSecret(path:what:allowGroupRead:owner:)``. The server and
    /// the commands read it through this one function.
    static func load(_ path: String, owner: (uid_t, gid_t)? = nil) throws(ConfigurationError) -> [NamedAdminToken] {
        let bytes: [UInt8]
        do { bytes = try PrivateFile.readSecret(path: path, what: "the admin tokens file", allowGroupRead: true, owner: owner) } catch {
            throw ConfigurationError(description: error.description)
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ConfigurationError(description: "\(path): the admin tokens file is not UTF-8 text")
        }
        return try parse(text, path: path)
    }

    /// The file's entries; throws on any line that is not blank, a `#` comment or an entry,
    /// and on a name given twice: a file half understood would grant or revoke at random.
    static func parse(_ text: String, path: String) throws(ConfigurationError) -> [NamedAdminToken] {
        var entries: [NamedAdminToken] = []
        // `\r\n` is one Character in Swift: split on every kind of line end.
        for (index, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            guard parts.count == 2 || parts.count == 3, isValidName(String(parts[0])), parts[1].hasPrefix("sha256:"),
                  let digest = hexBytes(parts[1].dropFirst("sha256:".count)), digest.count == 32 else {
                throw ConfigurationError(description: "\(path):\(index + 1): not an admin token entry (NAME sha256:HEX [view], as `account-server admin token add` writes)")
            }
            // The role spelled exactly: "View" or "read" taken for manage would grant what
            // the operator meant to withhold.
            var role = AdminRole.manage
            if parts.count == 3 {
                guard let named = AdminRole(rawValue: String(parts[2])) else {
                    throw ConfigurationError(description: "\(path):\(index + 1): \(String(parts[2].prefix(32)).debugDescription) is not a role (view or manage)")
                }
                role = named
            }
            guard !entries.contains(where: { $0.name == String(parts[0]) }) else {
                throw ConfigurationError(description: "\(path):\(index + 1): the name \(parts[0]) is given twice")
            }
            // One token, one admin: a digest copied under a second name (meant as a read-only
            // copy, say) would act as whichever line came first.
            if let other = entries.first(where: { $0.digest == digest }) {
                throw ConfigurationError(description: "\(path):\(index + 1): the token of \(parts[0]) is \(other.name)'s too (each admin has a token of their own)")
            }
            entries.append(NamedAdminToken(name: String(parts[0]), digest: digest, role: role))
        }
        return entries
    }

    private static func hexBytes(_ text: Substring) -> [UInt8]? {
        let scalars = Array(text.utf8)
        // Hex digits only: `UInt8(_:radix:)` alone would take "+f" or "-0".
        guard scalars.count % 2 == 0, scalars.allSatisfy({ (48...57).contains($0) || (65...70).contains($0) || (97...102).contains($0) }) else { return nil }
        var bytes: [UInt8] = []
        for index in stride(from: 0, to: scalars.count, by: 2) {
            guard let byte = UInt8(String(decoding: scalars[index..<index + 2], as: UTF8.self), radix: 16) else { return nil }
            bytes.append(byte)
        }
        return bytes
    }
}

/// The admin tokens the listener accepts: the shared one, read once at start, and the named
/// ones, whose file is looked at (`stat`) on every admin request and read again when it
/// changed, so that `account-server admin token remove alice` takes effect on alice's next
/// request, her page sessions included, without a restart or a signal. Only SHA-256 digests
/// are held; a presented token is compared with every one in constant time.
///
/// A named tokens file that cannot be read or understood (a bad edit, a wrong owner or mode)
/// refuses every named token until it is fixed, with an `error` logged (at most once a
/// minute): fail closed, as a revocation cannot be told from a typo. The shared token keeps
/// working throughout, and the server starts anyway: the FHIR and web listeners do not depend
/// on the admins' file. The file is read outside the lock; only the result is swapped in.
final class AdminKeyring: Sendable {
    /// nil: `--no-shared-admin-token`, only named tokens open the listener.
    private let shared: [UInt8]?
    let namedPath: String?
    private let logger: Logger
    private let named = Mutex(Loaded())

    private struct Loaded {
        /// The file as last read successfully (nil: not read, or the read failed: read again).
        var stamp: FileStamp?
        var entries: [NamedAdminToken] = []
        /// When a refusal of the file was last logged (its error once a minute at most).
        var lastComplaint: ContinuousClock.Instant?
    }

    /// What tells a changed file: the inode (a `rename` over it), size, change and
    /// modification times.
    private struct FileStamp: Equatable {
        var device: UInt64, inode: UInt64, size: Int64, changed: Int, changedNanoseconds: Int, modified: Int, modifiedNanoseconds: Int
    }

    /// The shortest token looked up: the shared one has at least 32 characters and the
    /// named ones 256 random bits; a shorter one is no token (a digest of "" written by hand
    /// must not make an empty bearer an admin).
    static let minimumLength = 32

    init(shared: AdminToken?, namedPath: String?, logger: Logger) {
        self.shared = shared?.digest
        self.namedPath = namedPath
        self.logger = logger
        let names = current().count
        if let namedPath {
            // Said at start: a server pointed at another file than the commands write would
            // otherwise refuse the tokens added there without a word.
            logger.notice("admin tokens file", metadata: ["file": "\(namedPath)",
                                                          "names": "\(Self.stamp(namedPath) == nil ? "absent: no named token" : String(names))"])
        }
    }

    /// Whether the shared token (`--admin-token-file`) opens the listener (not under
    /// `--no-shared-admin-token`).
    var acceptsSharedToken: Bool { shared != nil }

    /// Whether some token may act: the shared one, or a named `manage` one in the file now.
    /// (Said at start: with the shared token off and no such line, no admin can act through
    /// the API or the page until someone with a shell adds one.)
    var someTokenMayManage: Bool { shared != nil || current().contains { $0.role == .manage } }

    /// The identity `presented` proves, if any.
    func identify(_ presented: String) -> AdminIdentity? {
        guard presented.utf8.count >= Self.minimumLength else { return nil }
        let digest = Array(SHA256.hash(data: Array(presented.utf8)))
        if let shared, SecretToken.constantTimeEquals(shared, digest) { return AdminIdentity(name: nil, role: .manage, digest: digest) }
        var found: NamedAdminToken?
        // Every entry compared, none skipped: the time taken says nothing of which matched.
        for entry in current() where SecretToken.constantTimeEquals(entry.digest, digest) {
            found = found ?? entry
        }
        return found.map { AdminIdentity(name: $0.name, role: $0.role, digest: digest) }
    }

    /// `identity` as it holds now, or nil when it no longer does: the shared token always
    /// holds; a named one while the file lists that name with that token, with the role the
    /// file gives it now (`admin token role alice view` takes effect on her live page
    /// sessions' next request).
    func current(_ identity: AdminIdentity) -> AdminIdentity? {
        guard let name = identity.name else { return identity }
        return current().first { $0.name == name && SecretToken.constantTimeEquals($0.digest, identity.digest) }
            .map { AdminIdentity(name: name, role: $0.role, digest: identity.digest) }
    }

    /// The named entries, read again if the file changed since it was last read.
    private func current() -> [NamedAdminToken] {
        guard let namedPath else { return [] }
        let stamp = Self.stamp(namedPath)
        let cached: [NamedAdminToken]? = named.withLock { loaded in
            guard let stamp else {
                // No file (or none that can be looked at): no named token.
                if loaded.stamp != nil || !loaded.entries.isEmpty {
                    logger.notice("admin tokens file gone: no named admin token is accepted", metadata: ["file": "\(namedPath)"])
                }
                loaded.stamp = nil
                loaded.entries = []
                return []
            }
            return stamp == loaded.stamp ? loaded.entries : nil
        }
        if let cached { return cached }
        // Read outside the lock: a slow file system holds up this request only.
        let result = Result { () throws(ConfigurationError) in try NamedAdminToken.load(namedPath) }
        return named.withLock { loaded in
            switch result {
            case .success(let entries):
                let before = Dictionary(loaded.entries.map { ($0.name, $0.digest) }, uniquingKeysWith: { first, _ in first })
                let after = Dictionary(entries.map { ($0.name, $0.digest) }, uniquingKeysWith: { first, _ in first })
                let added = after.keys.filter { before[$0] == nil }.sorted(), removed = before.keys.filter { after[$0] == nil }.sorted()
                let replaced = after.keys.filter { before[$0] != nil && before[$0] != after[$0] }.sorted()
                let rolesBefore = Dictionary(loaded.entries.map { ($0.name, $0.role) }, uniquingKeysWith: { first, _ in first })
                let roleChanged = entries.filter { entry in rolesBefore[entry.name].map { $0 != entry.role } ?? false }
                    .map { "\($0.name)=\($0.role.rawValue)" }.sorted()
                if loaded.lastComplaint != nil {
                    logger.notice("admin tokens file accepted again", metadata: ["file": "\(namedPath)", "names": "\(entries.count)"])
                } else if !(added.isEmpty && removed.isEmpty && replaced.isEmpty && roleChanged.isEmpty) {
                    logger.notice("admin tokens file read", metadata: [
                        "file": "\(namedPath)", "names": "\(entries.count)", "added": "\(added.joined(separator: ","))",
                        "removed": "\(removed.joined(separator: ","))", "replaced": "\(replaced.joined(separator: ","))",
                        "roles": "\(roleChanged.joined(separator: ","))",
                    ])
                }
                loaded.stamp = stamp
                loaded.entries = entries
                loaded.lastComplaint = nil
            case .failure(let error):
                // Not remembered as read: tried again at the next request (a transient
                // failure, EMFILE or EIO, does not outlast itself), its error logged once a
                // minute.
                loaded.stamp = nil
                loaded.entries = []
                let now = ContinuousClock.now
                if loaded.lastComplaint.map({ now - $0 >= .seconds(60) }) ?? true {
                    loaded.lastComplaint = now
                    logger.error("admin tokens file refused: no named admin token is accepted until it is fixed",
                                 metadata: ["file": "\(namedPath)", "error": "\(error)"])
                }
            }
            return loaded.entries
        }
    }

    private static func stamp(_ path: String) -> FileStamp? {
        var status = stat()
        guard stat(path, &status) == 0 else { return nil }
        return FileStamp(device: UInt64(status.st_dev), inode: UInt64(status.st_ino), size: Int64(status.st_size),
                         changed: status.st_ctim.tv_sec, changedNanoseconds: status.st_ctim.tv_nsec,
                         modified: status.st_mtim.tv_sec, modifiedNanoseconds: status.st_mtim.tv_nsec)
    }
}
