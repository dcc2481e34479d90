import Foundation

/// libpq's password file, read as libpq reads it, so the file an operator already keeps for
/// `psql` and `pg_dump` also serves `account-server`: a password typed into `--database` or
/// `PGPASSWORD=…` on a command line stays in the shell's history and in `ps`.
///
/// The file is `PGPASSFILE`, or `.pgpass` in the home directory (`HOME`, else the user's
/// entry in the password database). Each line is `host:port:database:user:password`; a field
/// that is exactly `*` matches anything, `\` escapes the next character (`\:`, `\\`), lines
/// starting with `#` are comments, and the first matching line wins. It is read only when
/// neither the URL nor `PGPASSWORD` gives a password, as libpq does.
///
/// Where libpq ignores a file its group or others can access (with a warning), the server
/// refuses to start and says why: the password in it is no longer a secret, and an
/// authentication failure later would not point at the file.
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
            if errno == ENOENT || errno == ENOTDIR { return nil }
            throw .configuration("\(path): cannot read the PostgreSQL password file (\(String(cString: strerror(errno))))")
        }
        let bytes: [UInt8]
        do {
            bytes = try PrivateFile.readSecret(path: path, what: "the PostgreSQL password file", allowGroupRead: false)
        } catch {
            throw .configuration(error.description)
        }
        return match(String(decoding: bytes, as: UTF8.self), host: host, port: port, database: database, username: username)
    }

    /// The first line of `contents` that matches, libpq's rules.
    static func match(_ contents: String, host: String, port: Int, database: String, username: String) -> String? {
        let wanted = [host, String(port), database, username]
        // `\r\n` is one Character in Swift: splitting on newlines takes both line ends.
        for line in contents.split(whereSeparator: \.isNewline) {
            if line.hasPrefix("#") { continue }
            let fields = fields(line)
            guard fields.count >= 5 else { continue }
            let matches = zip(fields.prefix(4), wanted).allSatisfy { field, value in field.isWildcard || field.text == value }
            if matches {
                // libpq takes the rest of the line as the password, colons (escaped or not) included.
                return fields.dropFirst(4).map(\.text).joined(separator: ":")
            }
        }
        return nil
    }

    private struct Field { var text: String; var isWildcard: Bool }

    /// Splits on unescaped `:`, removing the escapes. A field is a wildcard only when it is
    /// an unescaped `*` alone.
    private static func fields(_ line: Substring) -> [Field] {
        var fields: [Field] = []
        var text = ""
        var escapedSomething = false
        var iterator = line.makeIterator()
        while let character = iterator.next() {
            switch character {
            case "\\":
                guard let next = iterator.next() else { text.append("\\"); continue }
                text.append(next)
                escapedSomething = true
            case ":":
                fields.append(Field(text: text, isWildcard: text == "*" && !escapedSomething))
                text = ""
                escapedSomething = false
            default:
                text.append(character)
            }
        }
        fields.append(Field(text: text, isWildcard: text == "*" && !escapedSomething))
        return fields
    }
}
