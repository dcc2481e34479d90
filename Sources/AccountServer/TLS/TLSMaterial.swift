import Foundation
import HummingbirdCore
import Logging
import NIOCore
import NIOSSL
import Storage
import Synchronization
import X509

/// The certificates, keys and client CAs the listeners present or trust, re-read on SIGHUP so
/// that a rotation needs no restart: connections already open keep the context they started
/// with, new handshakes get the new one. A reload that fails (file missing, key not matching
/// its certificate, CA file empty) keeps the previous material in force and logs why — a
/// half-done rotation must neither stop the service nor open it.
final class TLSMaterial: Sendable {
    /// Where the material lives; the same paths are re-read on every reload.
    struct Paths: Sendable {
        var certificate: String
        var key: String
        var clientCAs: [String]
        var webCertificate: String?
        var webKey: String?
        /// The CA(s) of the TLS-terminating proxy's own client certificate (proxy mTLS).
        var proxyClientCAs: [String] = []
    }

    /// One consistent generation of contexts, built together from the same files.
    struct Generation: Sendable {
        /// The FHIR listener when it terminates mutual TLS itself.
        var fhirMutual: NIOSSLContext
        /// The FHIR listener behind a TLS-terminating proxy, with `--fhir-proxy-tls`.
        var fhirServerOnly: NIOSSLContext
        /// The FHIR listener behind a proxy that authenticates with its own certificate.
        var fhirProxyMutual: NIOSSLContext?
        /// The web listener, and the admin and forward-auth listeners when they use TLS.
        var web: NIOSSLContext
        var clientTrustRoots: [Certificate]
        var proxyTrustRoots: [Certificate]
        /// The leaf each surface presents, for `/readyz`.
        var presented: [PresentedCertificate]
        var loadedAt: Date
    }

    /// A server certificate in use, named by the surface presenting it.
    struct PresentedCertificate: Sendable {
        var name: String
        var certificate: Certificate
    }

    let paths: Paths
    private let state: Mutex<Generation>
    private let logger: Logger

    /// Loads everything now; a failure here stops the server from starting.
    init(paths: Paths, logger: Logger) throws {
        self.paths = paths
        self.logger = logger
        state = Mutex(try Self.load(paths))
    }

    var current: Generation { state.withLock { $0 } }

    /// Re-reads every file. Returns the new generation when it is in force, nil when the
    /// previous one was kept.
    @discardableResult
    func reload(reason: String) -> Generation? {
        do {
            let fresh = try Self.load(paths)
            state.withLock { $0 = fresh }
            logger.notice("TLS certificates reloaded", metadata: [
                "reason": "\(reason)",
                "certificates": "\(fresh.presented.map { "\($0.name): serial \(ClientIdentity.serialHex($0.certificate.serialNumber)) until \($0.certificate.notValidAfter)" }.joined(separator: "; "))",
                "client_cas": "\(fresh.clientTrustRoots.count)",
            ])
            return fresh
        } catch {
            logger.error("TLS certificate reload failed; the previous certificates stay in force", metadata: ["reason": "\(reason)", "error": "\(error)"])
            return nil
        }
    }

    private static func load(_ paths: Paths) throws -> Generation {
        let (chain, key) = try keyPair(certificate: paths.certificate, key: paths.key)
        guard !paths.clientCAs.isEmpty else {
            throw ConfigurationError(description: "at least one --client-ca is required: client certificates are verified against it")
        }
        var clientCAs: [NIOSSLCertificate] = []
        for path in paths.clientCAs {
            let certificates = try NIOSSLCertificate.fromPEMFile(path)
            guard !certificates.isEmpty else { throw ConfigurationError(description: "\(path): no certificate found") }
            clientCAs += certificates
        }
        let roots = try clientCAs.map { try Certificate(derEncoded: $0.toDERBytes()) }
        let fhirMutual = try NIOSSLContext(configuration: MutualTLSConfiguration.make(certificateChain: chain, privateKey: key, clientCAs: clientCAs))
        var proxyCAs: [NIOSSLCertificate] = []
        for path in paths.proxyClientCAs {
            let certificates = try NIOSSLCertificate.fromPEMFile(path)
            guard !certificates.isEmpty else { throw ConfigurationError(description: "\(path): no certificate found") }
            proxyCAs += certificates
        }
        let fhirProxyMutual = proxyCAs.isEmpty ? nil
            : try NIOSSLContext(configuration: MutualTLSConfiguration.make(certificateChain: chain, privateKey: key, clientCAs: proxyCAs))
        let proxyRoots = try proxyCAs.map { try Certificate(derEncoded: $0.toDERBytes()) }
        let fhirServerOnly = try NIOSSLContext(configuration: serverOnly(chain: chain, key: key))
        var webChain = chain
        var webKey = key
        if let certificate = paths.webCertificate, let keyPath = paths.webKey {
            (webChain, webKey) = try keyPair(certificate: certificate, key: keyPath)
        }
        let web = try NIOSSLContext(configuration: serverOnly(chain: webChain, key: webKey))
        let presented = [
            PresentedCertificate(name: "fhir", certificate: try Certificate(derEncoded: chain[0].toDERBytes())),
            PresentedCertificate(name: "web", certificate: try Certificate(derEncoded: webChain[0].toDERBytes())),
        ]
        return Generation(fhirMutual: fhirMutual, fhirServerOnly: fhirServerOnly, fhirProxyMutual: fhirProxyMutual, web: web,
                          clientTrustRoots: roots, proxyTrustRoots: proxyRoots, presented: presented, loadedAt: Date())
    }

    /// Reads a certificate chain and its key, and checks that they belong together (a
    /// rotation that renamed only one of the two files must not take effect).
    private static func keyPair(certificate: String, key: String) throws -> ([NIOSSLCertificate], NIOSSLPrivateKey) {
        let chain = try NIOSSLCertificate.fromPEMFile(certificate)
        guard let leaf = chain.first else { throw ConfigurationError(description: "\(certificate): no certificate found") }
        // As the other secrets: refused if others could read it or someone else owns it
        // (0600, or 0640 for a group of the server's; what libpq and OpenSSH require).
        let keyPEM = String(decoding: try PrivateFile.readSecret(path: key, what: "the TLS private key", allowGroupRead: true), as: UTF8.self)
        let privateKey = try NIOSSLPrivateKey(bytes: Array(keyPEM.utf8), format: .pem)
        let parsedLeaf = try Certificate(derEncoded: leaf.toDERBytes())
        if let parsedKey = try? Certificate.PrivateKey(pemEncoded: keyPEM), parsedKey.publicKey != parsedLeaf.publicKey {
            throw ConfigurationError(description: "\(key) is not the private key of \(certificate)")
        }
        return (chain, privateKey)
    }

    /// Server authentication only: TLS 1.2+ with the same suites as the mutual-TLS listener,
    /// HTTP/1.1.
    static func serverOnly(chain: [NIOSSLCertificate], key: NIOSSLPrivateKey) -> TLSConfiguration {
        var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        tls.minimumTLSVersion = .tlsv12
        tls.cipherSuiteValues = MutualTLSConfiguration.tls12Suites
        tls.applicationProtocols = ["http/1.1"]
        return tls
    }
}

/// A TLS server channel whose context is looked up for each new connection, so a SIGHUP
/// reload applies to the next handshake. Wraps Hummingbird's HTTP/1.1 channel.
struct ReloadableTLSChannel<Base: ServerChildChannel & HTTPChannelHandler>: ServerChildChannel, HTTPChannelHandler {
    typealias Value = Base.Value

    let base: Base
    let context: @Sendable () -> NIOSSLContext

    var responder: HTTPChannelHandler.Responder { base.responder }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context()))
        }.flatMap {
            self.base.setup(channel: channel, logger: logger)
        }
    }

    func handle(value: Base.Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}
