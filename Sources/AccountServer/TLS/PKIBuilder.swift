import Crypto
import Foundation
import Storage
import SwiftASN1
import X509

/// A certificate with its P-256 key, in the PEM forms files and curl use.
struct IssuedCertificate: Sendable {
    let certificate: Certificate
    let privateKey: P256.Signing.PrivateKey

    var certificatePEM: String { get throws { try certificate.serializeAsPEM().pemString + "\n" } }
    var privateKeyPEM: String { privateKey.pemRepresentation + "\n" }
}

/// Issues certificates and CRLs for the development PKI and for the tests' PKI matrix
/// (valid, wrong CN, wrong OU, revoked, expired, other CA). Not used in production paths.
enum PKIBuilder {
    /// A self-signed root, or an intermediate CA when `issuer` is given.
    static func makeCA(commonName: String, organization: String = "account-server development PKI", issuer: IssuedCertificate? = nil,
                       notBefore: Date = Date().addingTimeInterval(-3600), notAfter: Date = Date().addingTimeInterval(10 * 365 * 86400)) throws -> IssuedCertificate {
        let key = P256.Signing.PrivateKey()
        let name = try DistinguishedName {
            CountryName("FR")
            OrganizationName(organization)
            CommonName(commonName)
        }
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: notBefore, notValidAfter: notAfter, issuer: issuer?.certificate.subject ?? name, subject: name,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: .init(key.publicKey))
                if let issuer { AuthorityKeyIdentifier(keyIdentifier: try issuer.certificate.extensions.subjectKeyIdentifier?.keyIdentifier) }
            },
            issuerPrivateKey: .init(issuer?.privateKey ?? key)
        )
        return IssuedCertificate(certificate: certificate, privateKey: key)
    }

    enum Usage { case client, server }

    static func issue(commonName: String, organizationalUnit: String?, organization: String = "account-server development PKI",
                      usage: Usage, dnsNames: [String] = [], ipAddresses: [[UInt8]] = [],
                      notBefore: Date = Date().addingTimeInterval(-3600), notAfter: Date = Date().addingTimeInterval(825 * 86400),
                      extraCommonNames: [String] = [], issuer: IssuedCertificate) throws -> IssuedCertificate {
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName {
            CountryName("FR")
            OrganizationName(organization)
            if let organizationalUnit { OrganizationalUnitName(organizationalUnit) }
            for extra in extraCommonNames { CommonName(extra) }
            CommonName(commonName)
        }
        let names = dnsNames.map { GeneralName.dnsName($0) } + ipAddresses.map { GeneralName.ipAddress(ASN1OctetString(contentBytes: ArraySlice($0))) }
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: notBefore, notValidAfter: notAfter, issuer: issuer.certificate.subject, subject: subject,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([usage == .client ? .clientAuth : .serverAuth])
                if !names.isEmpty { SubjectAlternativeNames(names) }
                AuthorityKeyIdentifier(keyIdentifier: try issuer.certificate.extensions.subjectKeyIdentifier?.keyIdentifier)
            },
            issuerPrivateKey: .init(issuer.privateKey)
        )
        return IssuedCertificate(certificate: certificate, privateKey: key)
    }

    /// A v2 CRL signed by `issuer` (ecdsa-with-SHA256), DER-encoded.
    static func makeCRL(issuer: IssuedCertificate, revoked: [Certificate.SerialNumber],
                        thisUpdate: Date = Date().addingTimeInterval(-60), nextUpdate: Date? = Date().addingTimeInterval(7 * 86400)) throws -> [UInt8] {
        let algorithm: ASN1ObjectIdentifier = [1, 2, 840, 10045, 4, 3, 2]
        var tbs = DER.Serializer()
        try tbs.appendConstructedNode(identifier: .sequence) { coder in
            try coder.serialize(1)
            try coder.appendConstructedNode(identifier: .sequence) { try $0.serialize(algorithm) }
            try coder.serialize(issuer.certificate.subject)
            try coder.serialize(try utcTime(thisUpdate))
            if let nextUpdate { try coder.serialize(try utcTime(nextUpdate)) }
            if !revoked.isEmpty {
                try coder.appendConstructedNode(identifier: .sequence) { list in
                    for serial in revoked {
                        try list.appendConstructedNode(identifier: .sequence) { entry in
                            try entry.serialize(serial.bytes)
                            try entry.serialize(try utcTime(thisUpdate))
                        }
                    }
                }
            }
            // crlExtensions [0]: the authority key identifier, which RFC 5280 §5.2.1 requires.
            if let keyID = try issuer.certificate.extensions.subjectKeyIdentifier?.keyIdentifier {
                let identifier = try Certificate.Extension(AuthorityKeyIdentifier(keyIdentifier: keyID), critical: false)
                try coder.appendConstructedNode(identifier: ASN1Identifier(tagWithNumber: 0, tagClass: .contextSpecific)) { explicit in
                    try explicit.appendConstructedNode(identifier: .sequence) { try $0.serialize(identifier) }
                }
            }
        }
        let tbsBytes = tbs.serializedBytes
        let signature = try issuer.privateKey.signature(for: tbsBytes).derRepresentation
        var crl = DER.Serializer()
        try crl.appendConstructedNode(identifier: .sequence) { coder in
            coder.serializeRawBytes(tbsBytes)
            try coder.appendConstructedNode(identifier: .sequence) { try $0.serialize(algorithm) }
            try coder.serialize(ASN1BitString(bytes: ArraySlice(signature)))
        }
        return crl.serializedBytes
    }

    static func crlPEM(_ der: [UInt8]) -> String {
        PEMDocument(type: "X509 CRL", derBytes: der).pemString + "\n"
    }

    private static func utcTime(_ date: Date) throws -> UTCTime {
        let parts = Calendar(identifier: .gregorian).dateComponents(in: TimeZone(identifier: "UTC")!, from: date)
        return try UTCTime(year: parts.year!, month: parts.month!, day: parts.day!, hours: parts.hour!, minutes: parts.minute!, seconds: parts.second!)
    }
}

/// The PKI `serve` generates on first run when no TLS flag is given: a CA, a server
/// certificate for localhost, a SAS client certificate and an empty CRL, under
/// `./data/pki`. For trying the product; never for production.
struct DevelopmentPKI {
    static let clientCommonName = "sas-client.dev.invalid"
    static let clientOrganizationalUnit = "SAS-DEV"

    let directory: String
    var caPath: String { "\(directory)/ca.pem" }
    var serverCertificatePath: String { "\(directory)/server.pem" }
    var serverKeyPath: String { "\(directory)/server-key.pem" }
    var clientCertificatePath: String { "\(directory)/sas-client.pem" }
    var clientKeyPath: String { "\(directory)/sas-client-key.pem" }
    var crlPath: String { "\(directory)/crl.pem" }

    /// Creates the files unless they are all there. Returns whether it created them.
    @discardableResult
    func ensure() throws -> Bool {
        let files = [caPath, serverCertificatePath, serverKeyPath, clientCertificatePath, clientKeyPath, crlPath]
        if files.allSatisfy({ FileManager.default.fileExists(atPath: $0) }) { return false }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let ca = try PKIBuilder.makeCA(commonName: "account-server development CA")
        let server = try PKIBuilder.issue(commonName: "localhost", organizationalUnit: nil, usage: .server,
                                          dnsNames: ["localhost"], ipAddresses: [[127, 0, 0, 1]], issuer: ca)
        let client = try PKIBuilder.issue(commonName: Self.clientCommonName, organizationalUnit: Self.clientOrganizationalUnit, usage: .client, issuer: ca)
        let crl = try PKIBuilder.makeCRL(issuer: ca, revoked: [], nextUpdate: Date().addingTimeInterval(365 * 86400))
        try write(try ca.certificatePEM, to: caPath, mode: 0o644)
        try write(ca.privateKeyPEM, to: "\(directory)/ca-key.pem", mode: 0o600)
        try write(try server.certificatePEM, to: serverCertificatePath, mode: 0o644)
        try write(server.privateKeyPEM, to: serverKeyPath, mode: 0o600)
        try write(try client.certificatePEM, to: clientCertificatePath, mode: 0o644)
        try write(client.privateKeyPEM, to: clientKeyPath, mode: 0o600)
        try write(PKIBuilder.crlPEM(crl), to: crlPath, mode: 0o644)
        return true
    }

    private func write(_ text: String, to path: String, mode: Int) throws {
        // Private keys are created at their mode from the first byte (``PrivateFile``).
        unlink(path)  // a partial set is made again whole: a new CA must not meet old files
        do { try PrivateFile.create(path: path, contents: Array(text.utf8), mode: mode_t(mode)) } catch {
            throw ConfigurationError(description: "cannot write \(path): \(error.description)")
        }
    }
}
