import Crypto
import Foundation
import JWTKit

/// The provider's signing keys (its JWKS), each bound to one algorithm, and the JWS check.
///
/// Why not hand the JWKS to `JWTKeyCollection` as is: a collection falls back to its default
/// key for an unknown `kid` and lets the token's header choose the algorithm of a key that
/// names none. Here the algorithm is fixed per key by its type (RSA → RS256, EC P-256 →
/// ES256), the header's `alg` must be one the relying party accepts and match the key, and an
/// unknown `kid` is an unknown key (the caller then refreshes the set once).
struct ProviderKeys: Sendable {
    struct Key: Sendable {
        var kid: String?
        var algorithm: String
        var collection: JWTKeyCollection
    }

    var keys: [Key]

    /// Parses a JWKS document. Keys for encryption, of unknown types or on other curves are
    /// skipped; RSA keys below 2048 bits are refused by swift-crypto and skipped too.
    static func parse(_ data: Data) async throws(OpenIDConnectError) -> ProviderKeys {
        struct Document: Decodable { var keys: [Entry] }
        struct Entry: Decodable {
            var kty: String?
            var kid: String?
            var use: String?
            var alg: String?
            var n: String?
            var e: String?
            var crv: String?
            var x: String?
            var y: String?
        }
        let document: Document
        do { document = try JSONDecoder().decode(Document.self, from: data) } catch { throw .keys("the key set is not a JWKS document") }
        var keys: [Key] = []
        for entry in document.keys where entry.use == nil || entry.use == "sig" {
            let collection = JWTKeyCollection()
            let kid = entry.kid.map { JWKIdentifier(string: $0) }
            switch (entry.kty, entry.crv) {
            case ("RSA", _):
                guard entry.alg == nil || entry.alg == "RS256", let n = entry.n, let e = entry.e,
                      let key = try? Insecure.RSA.PublicKey(modulus: n, exponent: e) else { continue }
                await collection.add(rsa: key, digestAlgorithm: .sha256, kid: kid)
                keys.append(Key(kid: entry.kid, algorithm: "RS256", collection: collection))
            case ("EC", "P-256"):
                guard entry.alg == nil || entry.alg == "ES256", let x = entry.x, let y = entry.y,
                      let key = try? ES256PublicKey(parameters: (x: x, y: y)) else { continue }
                await collection.add(ecdsa: key, kid: kid)
                keys.append(Key(kid: entry.kid, algorithm: "ES256", collection: collection))
            default:
                continue
            }
        }
        guard !keys.isEmpty else { throw .keys("the key set holds no RS256 or ES256 signing key") }
        return ProviderKeys(keys: keys)
    }

    /// The protected header of a compact JWS, read before any key is chosen.
    struct Header: Sendable {
        var alg: String
        var kid: String?
        var typ: String?
    }

    static func header(of token: String) throws(OpenIDConnectError) -> Header {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let bytes = Base64URL.decode(parts[0]),
              let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
            throw .signature("not a compact JWS")
        }
        guard let alg = object["alg"] as? String else { throw .signature("no alg in the header") }
        // A critical extension we do not understand must be refused (RFC 7515 §4.1.11).
        guard object["crit"] == nil else { throw .signature("the header names critical extensions") }
        return Header(alg: alg, kid: object["kid"] as? String, typ: object["typ"] as? String)
    }

    enum Lookup {
        case verified(ClaimSet)
        case unknownKey
    }

    /// Verifies the signature with the key the header names (or, without a `kid`, each key of
    /// the header's algorithm). `.unknownKey` when no key matches, so the caller may refresh.
    func verify(_ token: String, header: Header, allowed: Set<String>) async throws(OpenIDConnectError) -> Lookup {
        guard allowed.contains(header.alg) else { throw .signature("algorithm \(String(header.alg.prefix(64)).debugDescription) is not accepted") }
        let candidates = keys.filter { $0.algorithm == header.alg && (header.kid == nil || $0.kid == header.kid) }
        guard !candidates.isEmpty else {
            if let kid = header.kid, keys.contains(where: { $0.kid == kid }) {
                throw .signature("key \(kid.debugDescription) does not sign with \(header.alg)")
            }
            return .unknownKey
        }
        for key in candidates {
            if let claims = try? await key.collection.verify(token, as: ClaimSet.self) { return .verified(claims) }
        }
        throw .signature("the signature does not verify")
    }
}
