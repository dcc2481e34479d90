import Accounts
import Foundation
import Logging
import SwiftASN1
import Synchronization
import X509

/// The verified caller of a mutual-TLS connection, as the audit trail records it.
struct ClientIdentity: Sendable, Equatable {
    /// RFC 4514 subject, e.g. `CN=sas.example,OU=SAS,O=ANS,C=FR`.
    var subject: String
    /// Serial number in upper-case hexadecimal, as OpenSSL and nginx's `$ssl_client_serial`
    /// print it (no DER sign byte): the value a backend compared in its nginx days.
    var serial: String
    var commonNames: [String]
    var organizationalUnits: [String]
    /// The leaf itself.
    var certificate: Certificate
    /// The leaf as nginx's `$ssl_client_escaped_cert`, relayed to the INT_R01 upstream
    /// (`X-SSL-Client-Cert`); encoded once per handshake, not per request.
    var escapedPEM: String?
    /// The validated path, leaf to trust anchor (set by the verifier): what every later
    /// request of the connection re-checks against the CRLs in force.
    var chain: [Certificate] = []

    init(certificate: Certificate) {
        self.certificate = certificate
        subject = certificate.subject.description
        serial = Self.serialHex(certificate.serialNumber)
        commonNames = Self.attributes(.RDNAttributeType.commonName, of: certificate)
        organizationalUnits = Self.attributes(.RDNAttributeType.organizationalUnitName, of: certificate)
    }

    static func attributes(_ type: ASN1ObjectIdentifier, of certificate: Certificate) -> [String] {
        certificate.subject.flatMap { $0 }.filter { $0.type == type }.map { "\($0.value)" }
    }

    /// A serial number as OpenSSL prints it: the DER content without its leading zero bytes
    /// (the sign byte a serial such as 0x80AB carries), at least one byte.
    static func serialHex(_ serial: Certificate.SerialNumber) -> String {
        let bytes = Array(serial.bytes)
        let significant = bytes.drop { $0 == 0 }
        return hex(significant.isEmpty ? [0] : Array(significant))
    }

    static func hex(_ bytes: some Sequence<UInt8>) -> String {
        SecretToken.hex(Array(bytes)).uppercased()
    }
}

/// Why a client certificate was refused: logged with subject and serial, never with key
/// material.
struct ClientCertificateRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    var subject: String
    var serial: String
    var reason: String

    var description: String { "client certificate refused (\(reason)): subject=\(subject) serial=\(serial)" }
}

/// The allow-lists on the leaf's subject, and the client-authentication key usage.
struct ClientSubjectPolicy: VerifierPolicy {
    var allowedCommonNames: Set<String>
    var allowedOrganizationalUnits: Set<String>

    let verifyingCriticalExtensions: [ASN1ObjectIdentifier] = [.X509ExtensionID.extendedKeyUsage]

    func chainMeetsPolicyRequirements(chain: UnverifiedCertificateChain) async -> PolicyEvaluationResult {
        let leaf = chain.leaf
        let identity = ClientIdentity(certificate: leaf)
        if !allowedCommonNames.isEmpty {
            // One CN, and listed: with several, a listed one beside another would leave which
            // of them names the caller to each reader of the subject (the upstream's
            // `X-SSL-Client-S-DN` among them). OUs, which qualify the caller, may be several.
            guard identity.commonNames.count <= 1 else {
                return .failsToMeetPolicy(reason: "the certificate has \(identity.commonNames.count) CNs \(identity.commonNames); one is expected")
            }
            guard identity.commonNames.contains(where: allowedCommonNames.contains) else {
                return .failsToMeetPolicy(reason: "CN \(identity.commonNames) is not in the allowed client CN list")
            }
        }
        if !allowedOrganizationalUnits.isEmpty && !identity.organizationalUnits.contains(where: allowedOrganizationalUnits.contains) {
            return .failsToMeetPolicy(reason: "OU \(identity.organizationalUnits) is not in the allowed client OU list")
        }
        do {
            if let usage = try leaf.extensions.extendedKeyUsage, !usage.contains(.clientAuth), !usage.contains(.any) {
                return .failsToMeetPolicy(reason: "the certificate's extended key usage does not allow client authentication")
            }
        } catch {
            return .failsToMeetPolicy(reason: "the certificate's extended key usage extension is malformed")
        }
        return .meetsPolicy
    }
}

/// Revocation against the loaded CRLs, for every certificate of the chain but the trust
/// anchor. An expired CRL fails closed for the certificates of its issuer.
struct CRLRevocationPolicy: VerifierPolicy {
    let store: CRLStore
    let now: Date

    let verifyingCriticalExtensions: [ASN1ObjectIdentifier] = []

    func chainMeetsPolicyRequirements(chain: UnverifiedCertificateChain) async -> PolicyEvaluationResult {
        if let problem = store.revocationProblem(path: Array(chain), now: now) { return .failsToMeetPolicy(reason: problem) }
        return .meetsPolicy
    }
}

/// Decides whether a presented client certificate chain may call the FHIR endpoint: a path to
/// one of the configured client CAs (RFC 5280: signatures, validity dates, basic constraints,
/// key usage), CN/OU allow-lists, client-auth usage, and CRLs. The same object checks the
/// certificates a trusted proxy forwards, so both topologies apply the same checks.
final class ClientCertificateVerifier: Sendable {
    let allowedCommonNames: Set<String>
    let allowedOrganizationalUnits: Set<String>
    let crlStore: CRLStore
    private let roots: Mutex<(certificates: [Certificate], store: CertificateStore, generation: Int)>
    private let logger: Logger

    /// The most certificates a caller may present (leaf included). An IGC-Santé path is a leaf,
    /// one intermediate and perhaps the root: 3. The path search of swift-certificates is
    /// depth-first over every presented candidate, so a dozen intermediates sharing one name
    /// and key would cost it millions of signature checks, before any authentication, on
    /// threads INT_R02 needs: a long presentation is refused before the search starts.
    static let maximumPresentedCertificates = 6

    init(trustRoots: [Certificate], allowedCommonNames: Set<String>, allowedOrganizationalUnits: Set<String>, crlStore: CRLStore, logger: Logger) {
        self.roots = Mutex((trustRoots, CertificateStore(trustRoots), 0))
        self.allowedCommonNames = allowedCommonNames
        self.allowedOrganizationalUnits = allowedOrganizationalUnits
        self.crlStore = crlStore
        self.logger = logger
    }

    var trustRoots: [Certificate] { roots.withLock { $0.certificates } }

    /// Takes a rotated client CA bundle into use (SIGHUP). Connections already verified are
    /// checked again on their next request (``revalidate(_:now:)``): one whose path ends at a
    /// CA no longer in the bundle is refused, however busy it keeps its connection.
    func replaceTrustRoots(_ certificates: [Certificate]) {
        roots.withLock { $0 = (certificates, CertificateStore(certificates), $0.generation + 1) }
    }

    /// Re-checks, for one more request on an already verified connection, what can change
    /// while it stays open: the validity period of every certificate of the validated path and
    /// its revocation status against the CRLs in force now (a SIGHUP or a polled CRL revokes a
    /// kept-alive connection from its next request). A dictionary lookup per certificate:
    /// cheap enough for every request. Returns the refusal, or nil.
    /// A revalidation that passed, and how long it stands without looking again: as long as
    /// the CRLs in force are the same (`generation`) and until the first certificate of the
    /// path or CRL it relied on expires. Kept per connection by the slot-search relay, whose
    /// every request would otherwise hash each certificate's issuer name (3 % of its CPU).
    struct Revalidation: Sendable {
        var generation: Int
        /// The trust roots' generation it was made under: a CA rotation checks again.
        var rootsGeneration = 0
        var until: Date
    }

    /// ``revalidate(_:now:)``, unless `previous` still stands.
    func revalidate(_ identity: ClientIdentity, previous: Revalidation?, now: Date = Date()) -> Result<Revalidation, ClientCertificateRefusal> {
        let generation = crlStore.generation
        let rootsGeneration = roots.withLock { $0.generation }
        if let previous, previous.generation == generation, previous.rootsGeneration == rootsGeneration, now < previous.until {
            return .success(previous)
        }
        if let refusal = revalidate(identity, now: now) { return .failure(refusal) }
        let path = identity.chain.isEmpty ? [identity.certificate] : identity.chain
        let expiries = path.map(\.notValidAfter) + [crlStore.earliestNextUpdate(path: path)].compactMap { $0 }
        return .success(Revalidation(generation: generation, rootsGeneration: rootsGeneration, until: expiries.min() ?? now))
    }

    func revalidate(_ identity: ClientIdentity, now: Date = Date()) -> ClientCertificateRefusal? {
        let path = identity.chain.isEmpty ? [identity.certificate] : identity.chain
        let anchorTrusted = identity.chain.last.map { anchor in roots.withLock { $0.certificates.contains(anchor) } } ?? true
        let reason: String? = if let expired = path.first(where: { now > $0.notValidAfter }) {
            "certificate \(ClientIdentity.serialHex(expired.serialNumber)) of the path expired during the connection"
        } else if !anchorTrusted {
            "the client CA the connection was verified against is no longer trusted"
        } else {
            crlStore.revocationProblem(path: path, now: now)
        }
        guard let reason else { return nil }
        logger.warning("client certificate refused", metadata: ["subject": "\(identity.subject)", "serial": "\(identity.serial)", "reason": "\(reason)"])
        return ClientCertificateRefusal(subject: identity.subject, serial: identity.serial, reason: reason)
    }

    /// Verifies a chain as presented (leaf first). On success, returns the caller's identity,
    /// which carries the validated chain (leaf to trust anchor).
    func verify(presented: [Certificate], now: Date = Date()) async -> Result<ClientIdentity, ClientCertificateRefusal> {
        guard let leaf = presented.first else {
            return .failure(ClientCertificateRefusal(subject: "-", serial: "-", reason: "no client certificate"))
        }
        let identity = ClientIdentity(certificate: leaf)
        guard presented.count <= Self.maximumPresentedCertificates else {
            let reason = "\(presented.count) certificates presented; at most \(Self.maximumPresentedCertificates) are read"
            logger.warning("client certificate refused", metadata: ["subject": "\(identity.subject)", "serial": "\(identity.serial)", "reason": "\(reason)"])
            return .failure(ClientCertificateRefusal(subject: identity.subject, serial: identity.serial, reason: reason))
        }
        let rootStore = roots.withLock { $0.store }
        var verifier = Verifier(rootCertificates: rootStore) {
            RFC5280Policy()
            ClientSubjectPolicy(allowedCommonNames: allowedCommonNames, allowedOrganizationalUnits: allowedOrganizationalUnits)
            CRLRevocationPolicy(store: crlStore, now: now)
        }
        let result = await verifier.validate(leaf: leaf, intermediates: CertificateStore(presented.dropFirst()))
        switch result {
        case .validCertificate(let chain):
            var verified = identity
            verified.escapedPEM = ForwardedCertificate.escapedPEM(leaf)
            verified.chain = Array(chain)
            return .success(verified)
        case .couldNotValidate(let failures):
            let reason: String
            if failures.isEmpty {
                reason = "no chain to a trusted client CA"
            } else {
                var seen = Set<String>()
                reason = failures.map { $0.policyFailureReason.description }.filter { seen.insert($0).inserted }.joined(separator: "; ")
            }
            let refusal = ClientCertificateRefusal(subject: identity.subject, serial: identity.serial, reason: reason)
            logger.warning("client certificate refused", metadata: [
                "subject": "\(identity.subject)", "serial": "\(identity.serial)", "reason": "\(reason)",
            ])
            return .failure(refusal)
        }
    }
}
