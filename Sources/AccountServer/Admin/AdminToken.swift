import Accounts
import Crypto
import Foundation
import Storage

/// The admin API's bearer token, read from `--admin-token-file`. Created (256 random bits,
/// mode 0600) when the file does not exist; refused when the file is readable by others.
/// Only its SHA-256 is kept in memory, and presented tokens are compared in constant time.
struct AdminToken: Sendable {
    let digest: [UInt8]

    init(token: String) {
        digest = Array(SHA256.hash(data: Array(token.utf8)))
    }

    static func load(path: String) throws -> (token: AdminToken, created: Bool) {
        var created = false
        if !FileManager.default.fileExists(atPath: path) {
            do { created = try PrivateFile.create(path: path, contents: Array((SecretToken.generate() + "\n").utf8)) } catch {
                throw ConfigurationError(description: "\(path): could not create the admin token file: \(error.description)")
            }
        }
        let bytes: [UInt8]
        do { bytes = try PrivateFile.readSecret(path: path, what: "the admin token file", allowGroupRead: false) } catch {
            throw ConfigurationError(description: error.description)
        }
        let text = String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard text.utf8.count >= 32 else {
            throw ConfigurationError(description: "\(path): the admin token must be at least 32 characters")
        }
        return (AdminToken(token: text), created)
    }

    func matches(_ presented: String) -> Bool {
        SecretToken.constantTimeEquals(digest, Array(SHA256.hash(data: Array(presented.utf8))))
    }

    /// The token of an `Authorization: Bearer <token>` header. Basic credentials are not
    /// accepted: a browser caches them and sends them with requests other sites make.
    static func bearer(_ authorization: String?) -> String? {
        guard let authorization else { return nil }
        let parts = authorization.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        return parts[1].trimmingCharacters(in: .whitespaces)
    }
}
