import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Files that hold secrets (the server key, the admin token, private keys), created readable
/// by their owner only **from their first byte**.
///
/// `FileManager.createFile(atPath:contents:attributes:)` does not do that on Linux: it writes
/// a temporary file at the umask's mode (0644 under the usual 022), renames it into place and
/// only then applies the mode, ignoring a failure; a local user watching the folder could open
/// the file in between and keep reading the secret after the chmod. Here the file is opened
/// with `O_CREAT | O_EXCL | O_NOFOLLOW` and the mode (umask can only narrow it), written and
/// synced under a temporary name, then `link`ed into place, which fails rather than replacing
/// a file another process created meanwhile: two instances starting at once on one key file
/// both end up reading the same complete file, never a half-written one.
public enum PrivateFile {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// Creates `path` with `contents` unless it exists; returns whether this call created it.
    /// A missing folder is created 0700.
    @discardableResult
    public static func create(path: String, contents: [UInt8], mode: mode_t = 0o600) throws(Failure) -> Bool {
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        if !FileManager.default.fileExists(atPath: directory) {
            do {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                        attributes: [.posixPermissions: 0o700])
            } catch {
                throw Failure(description: "\(directory): cannot create the folder (\(error.localizedDescription))")
            }
            guard chmod(directory, 0o700) == 0 else { throw failure(directory, "cannot narrow the folder to 0700") }
        }
        let temporary = try writeTemporary(besides: path, contents: contents, mode: mode)
        defer { unlink(temporary) }
        if link(temporary, path) == 0 { return true }
        if errno == EEXIST { return false }  // created meanwhile by another process: theirs is read
        throw failure(path, "cannot put in place")
    }

    /// Replaces `path` (or creates it) with `contents`, atomically: a reader opens the old
    /// file or the new one, whole, never a part; the new one is `mode` from its first byte,
    /// and belongs to `owner` (user, group) when given (root writing a service's file). The
    /// folder must exist; it is synced after the rename, so the change survives a power loss.
    public static func replace(path: String, contents: [UInt8], mode: mode_t = 0o600, owner: (uid_t, gid_t)? = nil) throws(Failure) {
        let temporary = try writeTemporary(besides: path, contents: contents, mode: mode, owner: owner)
        guard rename(temporary, path) == 0 else {
            let failure = failure(path, "cannot put in place")
            unlink(temporary)
            throw failure
        }
        let folder = open(URL(fileURLWithPath: path).deletingLastPathComponent().path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if folder >= 0 {
            _ = fsync(folder)
            close(folder)
        }
    }

    /// `contents`, written and synced into a new file beside `path`; returns its name.
    private static func writeTemporary(besides path: String, contents: [UInt8], mode: mode_t, owner: (uid_t, gid_t)? = nil) throws(Failure) -> String {
        var random = SystemRandomNumberGenerator()
        let temporary = "\(path).new-\(String(random.next(), radix: 36))"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
        guard descriptor >= 0 else { throw failure(temporary, "cannot create") }
        do throws(Failure) {
            defer { close(descriptor) }
            if let (user, group) = owner, user != geteuid() || group != getegid() {
                guard fchown(descriptor, user, group) == 0 else { throw failure(temporary, "cannot give it to uid \(user), gid \(group)") }
            }
            guard fchmod(descriptor, mode) == 0 else { throw failure(temporary, "cannot set its mode") }
            var written = 0
            while written < contents.count {
                let count = contents.withUnsafeBytes { write(descriptor, $0.baseAddress! + written, $0.count - written) }
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { throw failure(temporary, "cannot write") }
                written += count
            }
            guard fsync(descriptor) == 0 else { throw failure(temporary, "cannot sync") }
        } catch {
            unlink(temporary)
            throw error
        }
        return temporary
    }

    /// Reads a secret file, refusing one others could read or change: not a regular file
    /// (after symlinks, which are followed: Kubernetes mounts secrets through them), owned by
    /// another user than this process's or root (someone else could have planted a key they
    /// know), writable by its group or accessible to others, or readable by its group unless
    /// `allowGroupRead` (`0640 root:service-group`, the pattern of mounted secrets and of the
    /// TLS keys). The checks are made on the descriptor the bytes are read from.
    ///
    /// `owner`: a user and group the file may also belong to, its group then allowed to read
    /// it (a command-line tool run as root reading the service's file: the server, which
    /// reads it as itself, makes its own checks). Opened non-blocking, so that a FIFO put in
    /// its place is refused (not a regular file) instead of hanging the reader.
    public static func readSecret(path: String, what: String, allowGroupRead: Bool, owner: (uid_t, gid_t)? = nil) throws(Failure) -> [UInt8] {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard descriptor >= 0 else { throw failure(path, "cannot open \(what)") }
        defer { close(descriptor) }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { throw failure(path, "cannot read the mode of \(what)") }
        guard status.st_mode & S_IFMT == S_IFREG else { throw Failure(description: "\(path): \(what) must be a regular file") }
        guard status.st_uid == geteuid() || status.st_uid == 0 || status.st_uid == owner?.0 else {
            throw Failure(description: "\(path): \(what) must belong to the user the server runs as (or root), not uid \(status.st_uid)")
        }
        let refused: mode_t = allowGroupRead ? 0o027 : 0o077
        guard status.st_mode & refused == 0 else {
            throw Failure(description: allowGroupRead
                ? "\(path): \(what) must not be writable by its group nor accessible to others (chmod 600, or 640 for a group of the server's)"
                : "\(path): \(what) must not be readable by group or others (chmod 600)")
        }
        // Readable by its group: only a group of the server's own (`root:account-server`),
        // or every member of whatever group it happens to have (`adm`, `users`) reads it.
        if status.st_mode & 0o040 != 0, !isOwnGroup(status.st_gid), status.st_gid != owner?.1 {
            throw Failure(description: "\(path): \(what) is readable by group \(status.st_gid), which the server does not belong to: chmod 600, or chgrp it to the server's group")
        }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4_096)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else { throw failure(path, "cannot read \(what)") }
            if count == 0 { break }
            bytes += chunk[0..<count]
            guard bytes.count <= 65_536 else { throw Failure(description: "\(path): \(what) is too large to be a key or token") }
        }
        return bytes
    }

    /// The process's effective group or one of its supplementary groups.
    public static func isOwnGroup(_ group: gid_t) -> Bool {
        if group == getegid() { return true }
        let count = getgroups(0, nil)
        guard count > 0 else { return false }
        var groups = [gid_t](repeating: 0, count: Int(count))
        let filled = getgroups(count, &groups)
        return filled > 0 && groups.prefix(Int(filled)).contains(group)
    }

    private static func failure(_ path: String, _ what: String) -> Failure {
        Failure(description: "\(path): \(what) (\(String(cString: strerror(errno))))")
    }
}
