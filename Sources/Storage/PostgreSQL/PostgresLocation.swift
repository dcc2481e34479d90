import Foundation

/// A PostgreSQL server and database, from a libpq-style URL:
/// `postgres://user[:password]@host[:port]/database[?sslmode=…&sslrootcert=…]`.
///
/// `sslmode` follows libpq: `disable`, `require` (encrypted, server not verified; with
/// `sslrootcert`, verified as `verify-ca`, as libpq does),
/// `verify-ca` / `verify-full` (the server's certificate must chain to `sslrootcert`, or to
/// the system roots without it; `verify-full` also checks the host name). The default is
/// `verify-full`, stricter than libpq's `prefer`: a database holding password hashes and the
/// audit trail is not reached in clear or unverified unless the URL says so. The password
/// comes from the URL, else `PGPASSWORD`, else libpq's password file
/// (``PostgresPasswordFile``: `PGPASSFILE` or `~/.pgpass`); it is never part of ``description``.
public struct PostgresLocation: Sendable, Equatable, CustomStringConvertible {
    public enum TLSMode: String, Sendable, Equatable {
        case disable
        case require
        case verifyCA = "verify-ca"
        case verifyFull = "verify-full"
    }

    public var host: String
    public var port: Int
    public var username: String
    public var password: String?
    public var database: String
    public var tls: TLSMode
    /// PEM file of the CA that signs the server's certificate (`sslrootcert`).
    public var rootCertificatePath: String?

    public init(host: String, port: Int = 5432, username: String, password: String?, database: String,
                tls: TLSMode = .verifyFull, rootCertificatePath: String? = nil) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
        self.tls = tls
        self.rootCertificatePath = rootCertificatePath
    }

    public init(url: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws(StorageError) {
        guard let components = URLComponents(string: url), components.scheme == "postgres" || components.scheme == "postgresql" else {
            throw .configuration("not a postgres:// URL")
        }
        guard let bracketed = components.host, !bracketed.isEmpty else { throw .configuration("the PostgreSQL URL names no host") }
        // Foundation on Linux keeps an IPv6 literal's brackets (`[::1]`); libpq, the resolver
        // and the password file's host field have none.
        let host = bracketed.withoutIPv6Brackets
        guard let user = components.user, !user.isEmpty else { throw .configuration("the PostgreSQL URL names no user") }
        let database = String(components.path.drop(while: { $0 == "/" }))
        guard !database.isEmpty, !database.contains("/") else { throw .configuration("the PostgreSQL URL names no database") }
        var tls = TLSMode.verifyFull
        var root: String?
        for item in components.queryItems ?? [] {
            switch item.name {
            case "sslmode":
                guard let value = item.value, let mode = TLSMode(rawValue: value) else {
                    throw .configuration("sslmode must be disable, require, verify-ca or verify-full")
                }
                tls = mode
            case "sslrootcert":
                root = item.value
            default:
                throw .configuration("unknown PostgreSQL URL parameter \(item.name)")
            }
        }
        let port = components.port ?? 5432
        // An empty password is none, as for libpq: the next source is asked.
        var password = [components.password, environment["PGPASSWORD"]].compactMap { $0 }.first { !$0.isEmpty }
        if password == nil {
            password = try PostgresPasswordFile.password(host: host, port: port, database: database, username: user, environment: environment)
        }
        self.init(host: host, port: port, username: user, password: password, database: database, tls: tls, rootCertificatePath: root)
    }

    /// The URL without its password, for logs and `--help` echoes.
    public var description: String {
        var text = "postgres://\(username)@\(host.contains(":") ? "[\(host)]" : host):\(port)/\(database)?sslmode=\(tls.rawValue)"
        if let rootCertificatePath { text += "&sslrootcert=\(rootCertificatePath)" }
        return text
    }

    /// The same server, another database (tests create one database per test).
    public func with(database: String) -> PostgresLocation {
        var copy = self
        copy.database = database
        return copy
    }
}
