import Foundation
@testable import Storage
import StorageTesting
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// libpq's password file (`PGPASSFILE`, `~/.pgpass`), read as libpq reads it, so operators
/// keep the database password out of command lines and shell histories.
@Suite("PostgreSQL password file")
struct PostgresPasswordFileTests {
    private func temporaryDirectory() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("pgpass-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    private func write(_ contents: String, to path: String, mode: mode_t) throws {
        #expect(FileManager.default.createFile(atPath: path, contents: Data(contents.utf8)))
        #expect(chmod(path, mode) == 0)
    }

    @Test func linesMatchAsLibpqMatchesThem() {
        let file = """
            # comment:*:*:ghost:not-this
            db.example:5433:*:account:other-port
            db.example:5432:audit:account:other-database
            db\\:weird:5432:*:*:escaped-host
            db.example:*:*:account:pa\\:ss\\\\word
            *:*:*:account:later-line
            """
        func lookUp(_ host: String, _ port: Int = 5432, _ database: String = "account_server", _ user: String = "account") -> String? {
            PostgresPasswordFile.match(file, host: host, port: port, database: database, username: user)
        }
        #expect(lookUp("db.example") == "pa:ss\\word", "escapes removed; the first matching line wins")
        #expect(lookUp("db.example", 5433) == "other-port", "the port compared as text")
        #expect(lookUp("db.example", 5432, "audit") == "other-database")
        #expect(lookUp("db:weird", 5432, "x", "y") == "escaped-host", "an escaped colon is part of the host")
        #expect(lookUp("elsewhere") == "later-line", "`*` matches any host")
        #expect(lookUp("elsewhere", 5432, "x", "someone") == nil, "no line for that user")
        #expect(lookUp("# comment", 5432, "account_server", "ghost") == nil, "a comment is no line")
        // An escaped `*` is a literal star, not a wildcard; unescaped colons in the password
        // are part of it; CRLF line ends are accepted.
        #expect(PostgresPasswordFile.match("\\*:*:*:*:star\r\n", host: "db", port: 5432, database: "d", username: "u") == nil)
        #expect(PostgresPasswordFile.match("\\*:*:*:*:star\r\n", host: "*", port: 5432, database: "d", username: "u") == "star")
        #expect(PostgresPasswordFile.match("*:*:*:*:a:b:c\r\n", host: "db", port: 5432, database: "d", username: "u") == "a",
                "the password ends at the first unescaped colon, as libpq reads it")
        #expect(PostgresPasswordFile.match("db:5432:d:u:\n*:*:*:*:later\n", host: "db", port: 5432, database: "d", username: "u") == nil,
                "an empty password is none (and the first matching line still wins)")
        // Lines end at \n only, and fields compare byte for byte: a form feed or U+2028 is
        // part of a field, and a precomposed é does not match a decomposed one.
        #expect(PostgresPasswordFile.match("*:*:*:*:a\u{0C}b\n", host: "db", port: 5432, database: "d", username: "u") == "a\u{0C}b")
        #expect(PostgresPasswordFile.match("*:*:*:*:a\u{2028}b\n", host: "db", port: 5432, database: "d", username: "u") == "a\u{2028}b")
        #expect(PostgresPasswordFile.match("*:*:caf\u{E9}:*:p\n", host: "db", port: 5432, database: "cafe\u{301}", username: "u") == nil)
        #expect(PostgresPasswordFile.match("*:*:caf\u{E9}:*:p\n", host: "db", port: 5432, database: "caf\u{E9}", username: "u") == "p")
        #expect(PostgresPasswordFile.match("db:5432:d:u\n", host: "db", port: 5432, database: "d", username: "u") == nil, "four fields: no password")
    }

    /// The URL's password first, then `PGPASSWORD`, then the file (`PGPASSFILE`, else
    /// `$HOME/.pgpass`), as libpq; an empty one counts as none.
    @Test func theFileIsTheLastSourceOfThePassword() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = directory + "/pgpass"
        try write("db.example:5432:account_server:account:from-file\n", to: file, mode: 0o600)
        let url = "postgres://account@db.example/account_server"
        #expect(try PostgresLocation(url: url, environment: ["PGPASSFILE": file]).password == "from-file")
        #expect(try PostgresLocation(url: "postgres://account:@db.example/account_server", environment: ["PGPASSFILE": file]).password == "from-file")
        #expect(try PostgresLocation(url: url, environment: ["PGPASSFILE": file, "PGPASSWORD": "from-env"]).password == "from-env")
        #expect(try PostgresLocation(url: url, environment: ["PGPASSFILE": file, "PGPASSWORD": ""]).password == "from-file")
        #expect(try PostgresLocation(url: "postgres://account:from-url@db.example/account_server",
                                     environment: ["PGPASSFILE": file, "PGPASSWORD": "from-env"]).password == "from-url")
        #expect(try PostgresLocation(url: "postgres://account@db.example/other", environment: ["PGPASSFILE": file]).password == nil,
                "no line for that database")
        #expect(!"\(try PostgresLocation(url: url, environment: ["PGPASSFILE": file]))".contains("from-file"), "never printed")
        // The home directory's .pgpass when PGPASSFILE is not set; no file, no password.
        try FileManager.default.createDirectory(atPath: directory + "/home", withIntermediateDirectories: true)
        #expect(try PostgresLocation(url: url, environment: ["HOME": directory + "/home"]).password == nil)
        try write("*:*:*:*:from-home\n", to: directory + "/home/.pgpass", mode: 0o600)
        #expect(try PostgresLocation(url: url, environment: ["HOME": directory + "/home"]).password == "from-home")
        #expect(try PostgresLocation(url: url, environment: ["HOME": directory + "/home", "PGPASSFILE": directory + "/absent"]).password == nil,
                "PGPASSFILE names the file, even an absent one")
    }

    /// A file its group or others can read is no secret: refused with the reason and the fix,
    /// where libpq ignores it with a warning and lets authentication fail later.
    @Test(arguments: [0o640 as mode_t, 0o604, 0o620])
    func aFileOthersCanAccessIsRefused(_ mode: mode_t) throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = directory + "/pgpass"
        try write("*:*:*:*:secret\n", to: file, mode: mode)
        #expect {
            _ = try PostgresLocation(url: "postgres://account@db.example/account_server", environment: ["PGPASSFILE": file])
        } throws: { error in
            guard case .configuration(let message) = error as? StorageError else { return false }
            return message.contains(file) && message.contains("chmod 600") && !message.contains("secret\n")
        }
        // Not read at all when the password comes from elsewhere.
        #expect(try PostgresLocation(url: "postgres://account@db.example/account_server", environment: ["PGPASSFILE": file, "PGPASSWORD": "p"]).password == "p")
        // A directory, or a FIFO (opening it would wait for a writer forever), is refused
        // before it is opened.
        #expect(throws: StorageError.self) {
            _ = try PostgresLocation(url: "postgres://account@db.example/account_server", environment: ["PGPASSFILE": directory])
        }
        let fifo = directory + "/fifo"
        #expect(mkfifo(fifo, 0o600) == 0)
        #expect {
            _ = try PostgresLocation(url: "postgres://account@db.example/account_server", environment: ["PGPASSFILE": fifo])
        } throws: { "\($0)".contains("must be a regular file") }
        // An IPv6 literal's host is matched without its brackets, as libpq writes it.
        let v6 = directory + "/v6"
        try write("\\:\\:1:5432:*:account:six\n", to: v6, mode: 0o600)
        let location = try PostgresLocation(url: "postgres://account@[::1]:5432/account_server", environment: ["PGPASSFILE": v6])
        #expect(location.host == "::1" && location.password == "six" && "\(location)".hasPrefix("postgres://account@[::1]:5432/"))
    }

    /// On the test server (scram-sha-256 for every connection): a URL without a password
    /// connects with the file's.
    @Test(.enabled(if: TestStore.kind == .postgres))
    func aServerAcceptsThePasswordFromTheFile() async throws {
        let admin = try TestStore.administrator()
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = directory + "/pgpass"
        let escaped = (admin.password ?? "").replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: ":", with: "\\:")
        try write("\(admin.host):\(admin.port):*:\(admin.username):\(escaped)\n", to: file, mode: 0o600)
        var url = "postgres://\(admin.username)@\(admin.host):\(admin.port)/postgres?sslmode=\(admin.tls.rawValue)"
        if let root = admin.rootCertificatePath { url += "&sslrootcert=\(root)" }
        let location = try PostgresLocation(url: url, environment: ["PGPASSFILE": file])
        #expect(location.password == admin.password && location.password != nil)
        try await TestStore.execute("SELECT 1", on: location)
        // Without a password from any source, the refusal says where one could come from.
        let none = try PostgresLocation(url: url, environment: ["PGPASSFILE": directory + "/absent"])
        #expect(none.password == nil)
        await #expect {
            try await TestStore.execute("SELECT 1", on: none)
        } throws: { error in
            "\(error)".contains("asks for a password and none was given") && "\(error)".contains("~/.pgpass")
        }
    }
}
