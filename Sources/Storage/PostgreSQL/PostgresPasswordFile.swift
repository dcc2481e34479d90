import Foundation

/// libpq's password file, read as libpq reads it, so the file an operator already keeps for
/// `psql` and `pg_dump` also serves `account-server`: a password typed into `--database` or
/// `PGPASSWORD=…` on a command line stays in the shell's history and in `ps`.
///
/// The file is `PGPASSFILE`, or `.pgpass` in the home directory (`HOME`, else the user's
/// entry in the password database). Each line is `host:port:database:user:password`; a field
/// that is exactly `*` matches anything, `\` escapes the next character (`\:`, `\\`), lines
/// starting with `#` are comments, and the first matching line wins. It is read only when
/// neither the URL nor `PGPASSWORD` gives a password, as libpq does, and once, when the
/// database argument is read: a password changed in it is taken at the next start.
///
/// As libpq: lines end at `\n` (a `\r` before it is dropped), fields compare byte for byte,
/// the password ends at the first unescaped `:`, an empty one is none, and a file that cannot
/// be reached (absent, or in a home folder this user may not enter) is no file. Where libpq
/// ignores a file its group or others can access, or one that is not a regular file (with a
/// warning), the server refuses to start and says why: the password in it is no longer a
/// secret, and an authentication failure later would not point at the file.
public enum PostgresPasswordFile {
    /// The file to read, or nil when no home directory is known.
    public static func path(environment: [String: String]) -> String? {
        if let explicit = environment["PGPASSFILE"], !explicit.isEmpty { return explicit }
        if let home = environment["HOME"], !home.isEmpty { return home + "/.pgpass" }
        guard let entry = getpwuid(geteuid()), let directory = entry.pointee.pw_dir else { return nil }
        let home = String(cString: directory)
        return home.isEmpty ? nil : home + "/.pgpass"
    }

    /// The password the file holds for this server, database and user; nil when there is no
    /// file or no line matches.
    public static func password(host: String, port: Int, database: String, username: String,
                                environment: [String: String]) throws(StorageError) -> String? {
        guard let path = path(environment: environment) else { return nil }
        var status = stat()
        guard stat(path, &status) == 0 else {
            // No file, or a home folder this user may not enter (`HOME=/root` kept by `runuser`).
            if errno == ENOENT || errno == ENOTDIR || errno == EACCES { return nil }
            throw .configuration("\(path): cannot read the PostgreSQL password file (\(String(cString: strerror(errno))))")
        }
        // Checked before opening: opening a FIFO would wait for a writer forever.
        guard status.st_mode & S_IFMT == S_IFREG else {
            throw .configuration("\(path): the PostgreSQL password file must be a regular file")
        }
        let bytes: [UInt8]
        do {
            bytes = try PrivateFile.readSecret(path: path, what: "the PostgreSQL password file", allowGroupRead: false)
        } catch {
            throw .configuration(error.description)
        }
        return match(bytes, host: host, port: port, database: database, username: username)
    }

    /// The password of the first line of `contents` that matches, libpq's rules; nil when
    /// none matches or the matching line's password is empty.
    static func match(_ contents: [UInt8], host: String, port: Int, database: String, username: String) -> String? {
        let wanted = [host, String(port), database, username].map { Array($0.utf8) }
        for rawLine in contents.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true) {
            var line = rawLine[...]
            if line.last == UInt8(ascii: "\r") { line = line.dropLast() }
            if line.first == UInt8(ascii: "#") { continue }
            let fields = fields(line)
            guard fields.count >= 5 else { continue }
            if zip(fields.prefix(4), wanted).allSatisfy({ field, value in field.isWildcard || field.bytes == value }) {
                // libpq reads the password up to the first unescaped `:`.
                let password = fields[4].bytes
                return password.isEmpty ? nil : String(decoding: password, as: UTF8.self)
            }
        }
        return nil
    }

    /// The same rules on text (tests).
    static func match(_ contents: String, host: String, port: Int, database: String, username: String) -> String? {
        match(Array(contents.utf8), host: host, port: port, database: database, username: username)
    }

    private struct Field { var bytes: [UInt8]; var isWildcard: Bool }

    /// Splits on unescaped `:`, removing the escapes. A field is a wildcard only when it is
    /// an unescaped `*` alone.
    private static func fields(_ line: ArraySlice<UInt8>) -> [Field] {
        var fields: [Field] = []
        var bytes: [UInt8] = []
        var escapedSomething = false
        var index = line.startIndex
        while index < line.endIndex {
            let byte = line[index]
            if byte == UInt8(ascii: "\\"), index + 1 < line.endIndex {
                bytes.append(line[index + 1])
                escapedSomething = true
                index += 2
                continue
            }
            if byte == UInt8(ascii: ":") {
                fields.append(Field(bytes: bytes, isWildcard: bytes == [UInt8(ascii: "*")] && !escapedSomething))
                bytes = []
                escapedSomething = false
            } else {
                bytes.append(byte)
            }
            index += 1
        }
        fields.append(Field(bytes: bytes, isWildcard: bytes == [UInt8(ascii: "*")] && !escapedSomething))
        return fields
    }
}
