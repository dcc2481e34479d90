import Accounts
import Crypto
import Foundation
import Storage

/// Seals what the entries of a sign-in hand to the browser, so that reaching them writes
/// nothing: the login intent (its cookie carries the intent itself) and the `state` of a login
/// at the OpenID Connect provider (which names its intent and its start).
///
/// Why: the entries are reached from other sites by design (the SAS link, the provider's
/// answer), so a page of any site a regulator has open can navigate a window to them in a
/// loop. When each such navigation wrote a row (and spent the per-address budget that bounded
/// those rows), such a page filled the tables and locked a whole regulation centre, behind its
/// one address, out of signing in. Sealed, an entry costs a few microseconds of AES-GCM and
/// writes nothing; a row is written only once a sign-in has proven something (a password, a
/// state of this browser's own login).
///
/// AES-GCM under keys derived (HKDF) from the server key, one per purpose, never the key that
/// seals stored secrets: anyone may have an intent sealed (it asserts only what anyone can
/// assert, "I followed the SAS link"), as often as they like, and those ciphertexts must never
/// share nonces with the database's. Every instance of an installation shares the server key,
/// so an intent sealed by one opens on another.
struct LoginSeal: Sendable {
    private let intentKey: SymmetricKey
    private let stateKey: SymmetricKey

    init(serverKey: [UInt8]) {
        let key = SymmetricKey(data: serverKey)
        intentKey = HKDF<SHA256>.deriveKey(inputKeyMaterial: key, info: Array("account-server login intent v1".utf8), outputByteCount: 32)
        stateKey = HKDF<SHA256>.deriveKey(inputKeyMaterial: key, info: Array("account-server provider state v1".utf8), outputByteCount: 32)
    }

    static let intentContext = Array("login-intent v1".utf8)
    static let stateContext = Array("provider-state v1".utf8)

    /// The wire form of an intent, JSON inside the seal (only ever decoded once the seal has
    /// opened: the bytes are the server's own).
    private struct IntentPayload: Codable {
        var id: String
        var at: Int64
        var origin: String
        var originValue: String?
        var returnURL: String
    }

    func sealIntent(_ intent: LoginIntent, id: [UInt8], at: Date) -> String {
        let payload = IntentPayload(id: Base64URL.encode(id), at: at.epochMilliseconds, origin: intent.origin.rawValue,
                                    originValue: intent.originValue, returnURL: intent.returnURL)
        // Slashes as they are: a return URL full of them would otherwise double in size, and
        // the cookie must stay under browsers' 4 kB. Encoding five plain fields cannot fail.
        let encoder = JSONEncoder()
        encoder.outputFormatting = .withoutEscapingSlashes
        let plaintext = (try? encoder.encode(payload)) ?? Data()
        return Self.seal(Array(plaintext), key: intentKey, context: Self.intentContext)
    }

    func openIntent(_ token: String) -> (intent: LoginIntent, id: [UInt8], at: Date)? {
        guard let plaintext = Self.open(token, key: intentKey, context: Self.intentContext),
              let payload = try? JSONDecoder().decode(IntentPayload.self, from: Data(plaintext)),
              let origin = SessionOrigin(rawValue: payload.origin), let id = Base64URL.decode(payload.id) else { return nil }
        return (LoginIntent(origin: origin, originValue: payload.originValue, returnURL: payload.returnURL), id, Date(epochMilliseconds: payload.at))
    }

    /// A provider login's `state`: the intent's id and the login's start, 24 bytes sealed (70
    /// characters), unique per login by the seal's random nonce. A login that asked the
    /// provider to authenticate the user again (``SessionStore/createProviderLogin(intentToken:reauthentication:)``)
    /// carries one more byte, so that its callback, if the provider did not, is refused
    /// rather than sent back to the provider in a loop. (A server before that byte opens
    /// such a state as another browser's: refused, never mistaken.)
    func sealState(intentID: [UInt8], at: Date, reauthentication: Bool = false) -> String {
        var plaintext = intentID
        withUnsafeBytes(of: at.epochMilliseconds.bigEndian) { plaintext.append(contentsOf: $0) }
        if reauthentication { plaintext.append(Self.reauthenticationMark) }
        return Self.seal(plaintext, key: stateKey, context: Self.stateContext)
    }

    /// Intents' ids are 16 bytes (``SessionStore/createIntent(_:)``): a state is 24 bytes, or
    /// 25 with the mark.
    static let intentIDLength = 16
    static let reauthenticationMark: UInt8 = 1

    func openState(_ state: String) -> (intentID: [UInt8], at: Date, reauthentication: Bool)? {
        guard var plaintext = Self.open(state, key: stateKey, context: Self.stateContext) else { return nil }
        var reauthentication = false
        if plaintext.count == Self.intentIDLength + 9 {
            guard plaintext.last == Self.reauthenticationMark else { return nil }
            reauthentication = true
            plaintext.removeLast()
        }
        guard plaintext.count == Self.intentIDLength + 8 else { return nil }
        let milliseconds = plaintext.suffix(8).reduce(Int64(0)) { $0 << 8 | Int64($1) }
        return (Array(plaintext.dropLast(8)), Date(epochMilliseconds: milliseconds), reauthentication)
    }

    private static func seal(_ plaintext: [UInt8], key: SymmetricKey, context: [UInt8]) -> String {
        guard let combined = try? AES.GCM.seal(plaintext, using: key, authenticating: context).combined else {
            preconditionFailure("AES-GCM with a 32-byte key and a random nonce has a combined form")
        }
        return Base64URL.encode(Array(combined))
    }

    /// Bounded before any work: a cookie or query value of another size is no token of ours.
    private static func open(_ token: String, key: SymmetricKey, context: [UInt8]) -> [UInt8]? {
        guard token.utf8.count <= 4_096, let bytes = Base64URL.decode(token), bytes.count > 28,
              let box = try? AES.GCM.SealedBox(combined: bytes),
              let plaintext = try? AES.GCM.open(box, using: key, authenticating: context) else { return nil }
        return Array(plaintext)
    }
}
