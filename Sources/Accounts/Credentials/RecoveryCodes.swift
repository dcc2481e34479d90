import Foundation

/// Single-use recovery codes, the second factor of last resort: ten codes of 10 characters
/// from a 32-letter alphabet without look-alikes (50 bits each), shown once, stored as an
/// HMAC-SHA256 under a key derived from the server key, over the account and the code
/// (``storedForm(_:accountID:box:)``). 50 bits are too few for a plain hash: from a stolen
/// backup, one GPU would recover every account's codes at once in about a day.
public enum RecoveryCodes {
    public static let count = 10
    static let alphabet = Array("ABCDEFGHJKMNPQRSTVWXYZ0123456789".utf8)  // no I, L, O, U

    /// New codes formatted for people: `XXXXX-XXXXX`.
    public static func generate(count: Int = RecoveryCodes.count) -> [String] {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in
            let characters = (0..<10).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &generator)] }
            return String(decoding: characters[0..<5], as: UTF8.self) + "-" + String(decoding: characters[5...], as: UTF8.self)
        }
    }

    /// The canonical form typed codes are compared in: upper case, no separators, and the
    /// look-alikes a person may type (O→0, I/L→1) mapped back.
    public static func normalize(_ code: String) -> String {
        var result = ""
        for character in code.uppercased() where character.isLetter || character.isNumber {
            switch character {
            case "O": result.append("0")
            case "I", "L": result.append("1")
            default: result.append(character)
            }
        }
        return result
    }

    /// The stored form: `h1:` and the hex HMAC of the account id and the normalised code.
    public static func storedForm(_ code: String, accountID: String, box: SecretBox) -> String {
        let message = Array(accountID.utf8) + [0] + Array(normalize(code).utf8)
        return "h1:" + box.authenticationCode(message, purpose: "recovery-code").map { String(format: "%02x", $0) }.joined()
    }

    /// The form codes issued before 2026-12 were stored in (plain SHA-256 of the
    /// normalised code). A backup holding it gives the code away to one GPU-day of guessing,
    /// so each server rewrites the ones it finds (at start, then every retention pass) into ``rekeyedLegacyForm(_:accountID:box:)``
    /// (``CredentialStore/rekeyLegacyRecoveryCodes()``); a code typed is still compared with
    /// it too, for rows an instance of an earlier version writes during a rolling upgrade.
    public static func legacyHash(_ code: String) -> String {
        SecretToken.hash(normalize(code))
    }

    /// A legacy stored form made as hard to reverse as ``storedForm(_:accountID:box:)``
    /// without knowing the code: `h0:` and the hex HMAC, under a key derived from the server
    /// key, of the account id and the legacy hash. Printed codes keep working; a backup no
    /// longer yields them without the key file.
    public static func rekeyedLegacyForm(_ legacyHash: String, accountID: String, box: SecretBox) -> String {
        let message = Array(accountID.utf8) + [0] + Array(legacyHash.utf8)
        return "h0:" + box.authenticationCode(message, purpose: "recovery-code-legacy").map { String(format: "%02x", $0) }.joined()
    }
}
