import CCRL
import Foundation
import SwiftASN1
import X509

/// A parsed, signature-checked CRL: its issuer, validity window and revoked serial numbers.
struct CertificateRevocationList: Sendable {
    let issuer: DistinguishedName
    /// The key its signature verified with: of two CAs of the same name (a renewal with a
    /// new key, both in the bundle during the changeover), the one whose list this is.
    let signer: Certificate.PublicKey
    let thisUpdate: Date
    let nextUpdate: Date?
    /// Serial numbers as big-endian magnitude bytes without leading zeros.
    let revokedSerials: Set<[UInt8]>
    /// Where it was loaded from, for logs.
    let source: String

    struct LoadError: Error, CustomStringConvertible {
        var description: String
    }

    /// A CRL signed in the name of no CA of the bundle: it can revoke nothing this server
    /// accepts. Skipped (with a warning), not a failure of the whole set: after a CA leaves
    /// the bundle, a PKI job still publishing its CRL would otherwise stop every reload, and
    /// new revocations of the CAs still trusted would silently never take effect.
    struct UnknownIssuer: Error, CustomStringConvertible {
        var description: String
    }

    /// Parses DER and checks the signature against the CA among `issuers` whose subject
    /// matches the CRL's issuer. A CRL no configured CA signed is refused.
    init(der: [UInt8], source: String, issuers: [Certificate]) throws {
        guard let handle = der.withUnsafeBufferPointer({ ccrl_parse_der($0.baseAddress, $0.count) }) else {
            throw LoadError(description: "\(source): not a DER or PEM X.509 CRL")
        }
        defer { ccrl_free(handle) }
        let issuerLength = ccrl_issuer_der(handle, nil, 0)
        guard issuerLength > 0 else { throw LoadError(description: "\(source): CRL without an issuer") }
        var issuerDER = [UInt8](repeating: 0, count: issuerLength)
        _ = issuerDER.withUnsafeMutableBufferPointer { ccrl_issuer_der(handle, $0.baseAddress, $0.count) }
        let issuer = try DistinguishedName(derEncoded: issuerDER)
        guard ccrl_has_unhandled_critical_extension(handle) == 0 else {
            throw LoadError(description: "\(source): CRL has a critical extension this server does not implement (delta or partitioned CRL)")
        }
        let candidates = issuers.filter { $0.subject == issuer }
        guard !candidates.isEmpty else {
            throw UnknownIssuer(description: "\(source): CRL issuer \(issuer) is none of the configured client CAs")
        }
        var verifiedBy: Certificate?
        for candidate in candidates {
            var serializer = DER.Serializer()
            try serializer.serialize(candidate)
            let candidateDER = serializer.serializedBytes
            if candidateDER.withUnsafeBufferPointer({ ccrl_verify_signature(handle, $0.baseAddress, $0.count) }) == 1 {
                verifiedBy = candidate
                break
            }
        }
        guard let verifiedBy else {
            // Signed by another key than any CA of that name here: another CA of the same name
            // (the predecessor of a renewed one, gone from the bundle, whose list the PKI job
            // still publishes) when its authority key identifier names none of theirs, and then
            // it revokes nothing accepted here; otherwise a list that claims to be ours and is
            // not, refused.
            let authorityKeyID: [UInt8]? = {
                let length = ccrl_authority_key_id(handle, nil, 0)
                guard length > 0 else { return nil }
                var bytes = [UInt8](repeating: 0, count: length)
                _ = bytes.withUnsafeMutableBufferPointer { ccrl_authority_key_id(handle, $0.baseAddress, $0.count) }
                return bytes
            }()
            let keyIDs = candidates.map { (try? $0.extensions.subjectKeyIdentifier).flatMap { $0 }.map { Array($0.keyIdentifier) } }
            if let authorityKeyID, keyIDs.allSatisfy({ $0 != nil }), !keyIDs.contains(authorityKeyID) {
                throw UnknownIssuer(description: "\(source): CRL of \(issuer) signed by a key none of the client CAs of that name holds (authority key id \(authorityKeyID.map { String(format: "%02x", $0) }.joined())): a CA of that name no longer, or not yet, in the bundle")
            }
            throw LoadError(description: "\(source): CRL signature does not verify with the key of \(issuer)")
        }
        signer = verifiedBy.publicKey

        var seconds: Int64 = 0
        guard ccrl_this_update(handle, &seconds) == 0 else { throw LoadError(description: "\(source): unreadable thisUpdate") }
        thisUpdate = Date(timeIntervalSince1970: TimeInterval(seconds))
        // RFC 5280 §5.1.2.5: conforming issuers always give one. Without it a list would
        // never go stale, and a stale copy would keep revoked certificates usable for good.
        guard ccrl_next_update(handle, &seconds) == 0 else { throw LoadError(description: "\(source): CRL without nextUpdate") }
        nextUpdate = Date(timeIntervalSince1970: TimeInterval(seconds))

        var serials = Set<[UInt8]>()
        let count = ccrl_revoked_count(handle)
        for index in 0..<max(count, 0) {
            let length = ccrl_revoked_serial(handle, index, nil, 0)
            guard length > 0 else { continue }
            var serial = [UInt8](repeating: 0, count: length)
            _ = serial.withUnsafeMutableBufferPointer { ccrl_revoked_serial(handle, index, $0.baseAddress, $0.count) }
            serials.insert(serial)
        }
        revokedSerials = serials
        self.issuer = issuer
        self.source = source
    }

    /// A certificate serial as the CRL stores it (magnitude, no leading zeros).
    static func normalizedSerial(_ serial: Certificate.SerialNumber) -> [UInt8] {
        var bytes = Array(serial.bytes)
        while bytes.count > 1 && bytes.first == 0 { bytes.removeFirst() }
        return bytes
    }

    /// Reads a CRL file: PEM (one or more `X509 CRL` blocks) or DER. Lists of an issuer
    /// outside the bundle are returned apart (``UnknownIssuer``), as skipped.
    static func load(path: String, issuers: [Certificate]) throws -> (lists: [CertificateRevocationList], skipped: [String]) {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        var ders: [[UInt8]]
        if let text = String(data: data, encoding: .utf8), text.contains("-----BEGIN") {
            let documents = try PEMDocument.parseMultiple(pemString: text)
            ders = documents.filter { $0.discriminator == "X509 CRL" }.map(\.derBytes)
            guard !ders.isEmpty else { throw LoadError(description: "\(path): no X509 CRL block in the PEM file") }
        } else {
            ders = [Array(data)]
        }
        var lists: [CertificateRevocationList] = [], skipped: [String] = []
        for der in ders {
            do {
                lists.append(try CertificateRevocationList(der: der, source: path, issuers: issuers))
            } catch let unknown as UnknownIssuer {
                skipped.append(unknown.description)
            }
        }
        return (lists, skipped)
    }
}
