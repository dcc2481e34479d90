import Foundation
import GRDB
#if canImport(Glibc)
import Glibc
#endif

/// `account-server backup`: a consistent copy of a SQLite installation, taken while it serves.
///
/// Why a command rather than `sqlite3 … ".backup …"` in the docs: that one line, copied into
/// cron with a mistyped path, exits 0 and writes an empty "backup" (and an empty database at
/// the mistyped path), and its file gets the shell's umask (0644) although it holds personal
/// data, password hashes and the audit trail. Here the source must exist, the copy is created
/// 0600 from its first byte and never over an existing file, and the copy is verified before
/// the command says so: `PRAGMA integrity_check`, foreign keys, and every table's rows and
/// checksum against the same snapshot of the source. A copy that fails is deleted.
public enum SQLiteBackup {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// Memory stays bounded whatever the size of the file: the checksums are computed
    /// `pageSize` rows at a time (``StoreCopy/digest(_:pageSize:in:each:)``), and SQLite's
    /// backup copies pages.
    public static func copy(from path: String, to destination: String, tables: [CopiedTable],
                            pageSize: Int = StoreCopy.defaultPageSize) throws -> [CopiedTableReport] {
        guard FileManager.default.fileExists(atPath: path) else { throw Failure(description: "no database at \(path)") }
        // A -wal or -journal left at the destination by a crashed run would be replayed onto
        // the copy by SQLite (nothing ties it to the file): refused, like an existing copy.
        // lstat, not fileExists: a dangling symlink there is a leftover too (fileExists follows
        // it and says no, and SQLite then failed with a message naming nothing).
        var status = stat()
        for suffix in ["-wal", "-shm", "-journal"] where lstat(destination + suffix, &status) == 0 {
            throw Failure(description: "\(destination + suffix) exists: remove it (a leftover of an earlier run) or choose another name")
        }
        let created: Bool
        do { created = try PrivateFile.create(path: destination, contents: []) } catch {
            throw Failure(description: error.description)
        }
        guard created else { throw Failure(description: "\(destination) exists: a backup never replaces a file") }
        var kept = false
        defer {
            if !kept { for suffix in ["", "-wal", "-shm", "-journal"] { unlink(destination + suffix) } }
        }
        do {
            var readOnly = Configuration()
            readOnly.readonly = true
            readOnly.busyMode = .timeout(10)
            let source = try DatabaseQueue(path: path, configuration: readOnly)
            let target = try DatabaseQueue(path: destination)
            // One read transaction of the source: the rows checksummed and the pages copied
            // are the same snapshot, whatever the server commits meanwhile.
            let sourceDigests = try source.read { sourceDB in
                let digests = try tables.map { table in try StoreCopy.digest(table, pageSize: pageSize, in: SQLiteTransaction(sourceDB)) }
                try target.writeWithoutTransaction { targetDB in try sourceDB.backup(to: targetDB) }
                return digests
            }
            let reports = try target.read { targetDB in
                let integrity = try String.fetchAll(targetDB, sql: "PRAGMA integrity_check")
                guard integrity == ["ok"] else {
                    throw Failure(description: "the copy fails its integrity check: \(integrity.prefix(5).joined(separator: "; "))")
                }
                guard try Row.fetchAll(targetDB, sql: "PRAGMA foreign_key_check").isEmpty else {
                    throw Failure(description: "the copy fails its foreign key check")
                }
                return try zip(tables, sourceDigests).map { table, source in
                    let copied = try StoreCopy.digest(table, pageSize: pageSize, in: SQLiteTransaction(targetDB))
                    return CopiedTableReport(table: table.name, sourceRows: source.rows, targetRows: copied.rows,
                                             sourceChecksum: source.checksum, targetChecksum: copied.checksum)
                }
            }
            guard reports.allSatisfy(\.matches) else { throw StoreCopyError.mismatch(reports) }
            try target.close()
            try source.close()
            kept = true
            return reports
        } catch let failure as Failure {
            throw failure
        } catch {
            throw Failure(description: "\(error)")
        }
    }
}
