import Accounts
import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOSSL
import ServiceLifecycle
import X509

/// Builds the whole server from a configuration; `serve` and the integration tests both
/// call this, so tests run the real thing.
///
/// - Parameter onFHIRListening: called with the bound port once the FHIR listener is up
///   (tests bind port 0).
func buildApplication(
    _ configuration: ServerConfiguration,
    logger: Logger,
    onFHIRListening: @escaping @Sendable (Int) async -> Void = { _ in }
) async throws -> some ApplicationProtocol {
    // TLS material first: a server that cannot check its callers must not start.
    let certificateChain = try NIOSSLCertificate.fromPEMFile(configuration.tlsCertificatePath)
    let privateKey = try NIOSSLPrivateKey(file: configuration.tlsKeyPath, format: .pem)
    guard !configuration.clientCAPaths.isEmpty else {
        throw ConfigurationError(description: "at least one --client-ca is required: client certificates are verified against it")
    }
    var clientCAs: [NIOSSLCertificate] = []
    var trustRoots: [Certificate] = []
    for path in configuration.clientCAPaths {
        let certificates = try NIOSSLCertificate.fromPEMFile(path)
        guard !certificates.isEmpty else { throw ConfigurationError(description: "\(path): no certificate found") }
        clientCAs += certificates
        trustRoots += try certificates.map { try Certificate(derEncoded: $0.toDERBytes()) }
    }
    guard !configuration.allowedClientCommonNames.isEmpty else {
        throw ConfigurationError(description: "at least one --allowed-client-cn is required: every organisation holding a certificate from the client CA could otherwise call INT_R02")
    }
    let crlStore = try CRLStore(paths: configuration.clientCRLPaths, issuers: trustRoots, logger: logger)
    let verifier = ClientCertificateVerifier(
        trustRoots: trustRoots,
        allowedCommonNames: Set(configuration.allowedClientCommonNames),
        allowedOrganizationalUnits: Set(configuration.allowedClientOrganizationalUnits),
        crlStore: crlStore, logger: logger
    )
    let tlsConfiguration = MutualTLSConfiguration.make(certificateChain: certificateChain, privateKey: privateKey, clientCAs: clientCAs)
    let sslContext = try NIOSSLContext(configuration: tlsConfiguration)

    let database = try AccountDatabase(path: configuration.databasePath)
    let hasher = PasswordHasher(parameters: configuration.argon2, threads: configuration.argon2Threads)
    let provisioner = Provisioner(database: database, hasher: hasher, logger: logger)

    let router = Router(context: FHIRRequestContext.self)
    router.add(middleware: FHIRErrorMiddleware())
    PractitionerController(provisioner: provisioner, database: database, publicBaseURL: configuration.publicBaseURL)
        .addRoutes(to: router)

    let server = HTTPServerBuilder { responder in
        MutualTLSChannel(
            base: HTTP1Channel(responder: responder, configuration: .init(idleTimeout: .seconds(120))),
            sslContext: sslContext, verifier: verifier, logger: logger
        )
    }
    var app = Application(
        router: router,
        server: server,
        configuration: .init(address: .hostname(configuration.fhirHost, port: configuration.fhirPort), serverName: nil),
        onServerRunning: { channel in await onFHIRListening(channel.localAddress?.port ?? 0) },
        logger: logger
    )
    app.addServices(CRLReloadService(store: crlStore, pollInterval: configuration.crlPollInterval), PasswordHasherService(hasher: hasher))
    return app
}
