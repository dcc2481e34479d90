import Crypto
import Foundation

/// Random bearer secrets (session ids, reset tokens, login intents) and their stored form.
///
/// A token is 256 bits from the system CSPRNG, base64url without padding; only its SHA-256
/// is stored, so a database leak yields nothing usable. A random 256-bit token needs no salt
/// or slow hash: guessing it is already infeasible.
public enum SecretToken {
    public static func generate(byteCount: Int = 32) -> String {
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<byteCount).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
        return Base64URL.encode(bytes)
    }

    /// Whether `token` has the shape ``generate(byteCount:)`` gives (the unpadded base64url
    /// length of `byteCount` bytes, base64url characters only). A cookie of any other shape
    /// names no session: refused before the hash and the database read, so a flood of junk
    /// cookies (forward-auth sees every agenda request) costs no statement. Random well-shaped
    /// values still cost one: the proxy's rate limit bounds those.
    public static func isWellFormed(_ token: String, byteCount: Int = 32) -> Bool {
        let length = (byteCount * 4 + 2) / 3
        var count = 0
        for byte in token.utf8 {
            count += 1
            guard count <= length, Base64URL.isAlphabet(byte) else { return false }
        }
        return count == length
    }

    /// The stored form: lower-case hex SHA-256 of the token's UTF-8 bytes.
    public static func hash(_ token: String) -> String {
        hex(Array(SHA256.hash(data: Array(token.utf8))))
    }

    /// Lower-case hex, without Foundation's `String(format:)` (which dominated the cost of a
    /// forward-auth check: this runs on every request).
    public static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8](repeating: 0, count: bytes.count * 2)
        for (index, byte) in bytes.enumerated() {
            out[2 * index] = digits[Int(byte >> 4)]
            out[2 * index + 1] = digits[Int(byte & 0x0f)]
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Compares secrets in time independent of where they differ.
    public static func constantTimeEquals(_ lhs: some Collection<UInt8>, _ rhs: some Collection<UInt8>) -> Bool {
        guard lhs.count == rhs.count else { return false }
        var difference: UInt8 = 0
        for (a, b) in zip(lhs, rhs) { difference |= a ^ b }
        return difference == 0
    }
}

/// RFC 4648 §5 base64url without padding.
public enum Base64URL {
    public static func encode(_ bytes: [UInt8]) -> String {
        Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    /// nil for anything but the canonical unpadded base64url of some bytes: no `+`, `/`, `=`,
    /// spaces or line breaks, and no stray bits in the last character (Foundation ignores
    /// them, so "…A" and "…B" could decode alike: a token spent by the hash of its text must
    /// have one text only).
    /// `A–Z a–z 0–9 - _`.
    public static func isAlphabet(_ byte: UInt8) -> Bool {
        switch byte {
        case 0x41...0x5A, 0x61...0x7A, 0x30...0x39, 0x2D, 0x5F: true
        default: false
        }
    }

    public static func decode(_ text: String) -> [UInt8]? {
        guard text.utf8.allSatisfy(isAlphabet), text.utf8.count % 4 != 1 else { return nil }
        let standard = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        guard let data = Data(base64Encoded: standard + String(repeating: "=", count: (4 - standard.utf8.count % 4) % 4)) else { return nil }
        let bytes = Array(data)
        return encode(bytes) == text ? bytes : nil
    }
}

/// RFC 4648 §6 base32 (the alphabet authenticator apps expect for TOTP secrets).
public enum Base32 {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".utf8)

    public static func encode(_ bytes: [UInt8]) -> String {
        var output: [UInt8] = []
        var buffer: UInt32 = 0
        var bits = 0
        for byte in bytes {
            buffer = buffer << 8 | UInt32(byte)
            bits += 8
            while bits >= 5 {
                output.append(alphabet[Int((buffer >> UInt32(bits - 5)) & 31)])
                bits -= 5
            }
        }
        if bits > 0 { output.append(alphabet[Int((buffer << UInt32(5 - bits)) & 31)]) }
        return String(decoding: output, as: UTF8.self)
    }

    /// Decodes case-insensitively, ignoring spaces, dashes and padding; nil on other characters.
    public static func decode(_ text: String) -> [UInt8]? {
        var output: [UInt8] = []
        var buffer: UInt32 = 0
        var bits = 0
        for character in text.uppercased().utf8 where character != UInt8(ascii: " ") && character != UInt8(ascii: "-") && character != UInt8(ascii: "=") {
            guard let value = alphabet.firstIndex(of: character) else { return nil }
            buffer = buffer << 5 | UInt32(value)
            bits += 5
            if bits >= 8 {
                output.append(UInt8((buffer >> UInt32(bits - 8)) & 0xFF))
                bits -= 8
            }
        }
        return output
    }
}
