import Crypto
import Foundation
import Storage

/// Encrypts the few secrets that must be kept recoverable (TOTP secrets) with AES-256-GCM
/// under the server's key, bound to the account they belong to (associated data), so a
/// database copy alone yields nothing and a sealed value cannot be moved to another account.
public struct SecretBox: Sendable {
    private let key: SymmetricKey

    public init(key: [UInt8]) throws {
        guard key.count == 32 else { throw SecretBoxError(description: "the secret key must be 32 bytes, got \(key.count)") }
        self.key = SymmetricKey(data: key)
    }

    /// Reads the key file, or creates it (32 random bytes, mode 0600 from its first byte,
    /// ``PrivateFile``) when absent. The same bytes key this box and (derived) the CSRF
    /// tokens. A key file others could read or change is refused (``PrivateFile/readSecret(path:what:allowGroupRead:)``:
    /// owner the server's user or root, at most 0640).
    public static func loadOrCreateKey(path: String) throws -> [UInt8] {
        if !FileManager.default.fileExists(atPath: path) {
            var generator = SystemRandomNumberGenerator()
            let bytes = (0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
            do { try PrivateFile.create(path: path, contents: bytes) } catch { throw SecretBoxError(description: error.description) }
        }
        do { return try PrivateFile.readSecret(path: path, what: "the secret key file", allowGroupRead: true) } catch {
            throw SecretBoxError(description: error.description)
        }
    }

    /// HMAC-SHA256 of `message` under a key derived from the server key for `purpose`
    /// (HKDF): what a database copy alone cannot recompute, for secrets too short for a plain
    /// hash (recovery codes: 50 bits, a day of one GPU against SHA-256 for every account).
    public func authenticationCode(_ message: [UInt8], purpose: String) -> [UInt8] {
        let derived = HKDF<SHA256>.deriveKey(inputKeyMaterial: key, info: Array("account-server \(purpose)".utf8), outputByteCount: 32)
        return Array(HMAC<SHA256>.authenticationCode(for: message, using: derived))
    }

    public func seal(_ plaintext: [UInt8], context: String) throws -> [UInt8] {
        let box = try AES.GCM.seal(plaintext, using: key, authenticating: Array(context.utf8))
        guard let combined = box.combined else { throw SecretBoxError(description: "AES-GCM produced no combined form") }
        return Array(combined)
    }

    public func open(_ sealed: [UInt8], context: String) throws -> [UInt8] {
        Array(try AES.GCM.open(AES.GCM.SealedBox(combined: sealed), using: key, authenticating: Array(context.utf8)))
    }
}

public struct SecretBoxError: Error, CustomStringConvertible {
    public var description: String
}
