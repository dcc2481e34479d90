import Crypto
import Foundation

/// Time-based one-time passwords (RFC 6238 over RFC 4226 HOTP, HMAC-SHA1 as every
/// authenticator app supports), 6 digits, 30-second steps, accepting one step of clock drift
/// either way. A code is accepted only for a step *after* the last one used, so a code seen
/// once (shoulder-surfed, phished and replayed) is refused.
public struct TOTP: Sendable {
    public var digits: Int
    public var period: Int64
    /// Steps of drift accepted on each side of the current one.
    public var window: Int64

    public init(digits: Int = 6, period: Int64 = 30, window: Int64 = 1) {
        self.digits = digits
        self.period = period
        self.window = window
    }

    /// A new 160-bit secret (RFC 4226 recommends the HMAC key length).
    public static func generateSecret() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<20).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
    }

    public func step(at date: Date) -> Int64 {
        Int64((date.timeIntervalSince1970).rounded(.down)) / period
    }

    /// The code for one step, zero-padded.
    public func code(secret: [UInt8], step: Int64) -> String {
        var counter = UInt64(bitPattern: step).bigEndian
        let message = withUnsafeBytes(of: &counter) { Array($0) }
        let mac = Array(HMAC<Insecure.SHA1>.authenticationCode(for: message, using: SymmetricKey(data: secret)))
        let offset = Int(mac[mac.count - 1] & 0x0F)
        let binary = (UInt32(mac[offset] & 0x7F) << 24) | (UInt32(mac[offset + 1]) << 16) | (UInt32(mac[offset + 2]) << 8) | UInt32(mac[offset + 3])
        var modulus: UInt32 = 1
        for _ in 0..<digits { modulus *= 10 }
        let value = String(binary % modulus)
        return String(repeating: "0", count: digits - value.count) + value
    }

    /// The step `code` belongs to if it is valid at `date` (± window) and later than
    /// `lastUsedStep`; nil otherwise. Every candidate is compared, in constant time.
    public func verify(_ code: String, secret: [UInt8], at date: Date, lastUsedStep: Int64?) -> Int64? {
        let submitted = Array(code.filter { !$0.isWhitespace }.utf8)
        guard submitted.count == digits, submitted.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        let current = step(at: date)
        var matched: Int64?
        for candidate in (current - window)...(current + window) {
            let equal = SecretToken.constantTimeEquals(Array(self.code(secret: secret, step: candidate).utf8), submitted)
            if equal && candidate > (lastUsedStep ?? .min) && matched == nil { matched = candidate }
        }
        return matched
    }

    /// The `otpauth://` URI authenticator apps scan (Key Uri Format).
    public func provisioningURI(secret: [UInt8], account: String, issuer: String) -> String {
        let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-._~"))
        let label = "\(issuer):\(account)".addingPercentEncoding(withAllowedCharacters: allowed) ?? account
        let issuerParameter = issuer.addingPercentEncoding(withAllowedCharacters: allowed) ?? issuer
        return "otpauth://totp/\(label)?secret=\(Base32.encode(secret))&issuer=\(issuerParameter)&algorithm=SHA1&digits=\(digits)&period=\(period)"
    }
}
