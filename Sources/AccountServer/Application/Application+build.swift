import Accounts
import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOSSL
import ServiceLifecycle
import Habilitation
import HummingbirdTLS
import X509

/// Builds the whole server from a configuration; `serve` and the integration tests both
/// call this, so tests run the real thing.
///
/// - Parameter onFHIRListening: called with the bound port once the FHIR listener is up
///   (tests bind port 0).
func buildApplication(
    _ configuration: ServerConfiguration,
    logger: Logger,
    onFHIRListening: @escaping @Sendable (Int) async -> Void = { _ in },
    onWebListening: @escaping @Sendable (Int) async -> Void = { _ in },
    onAdminListening: @escaping @Sendable (Int) async -> Void = { _ in },
    onForwardAuthListening: @escaping @Sendable (Int) async -> Void = { _ in }
) async throws -> some ApplicationProtocol {
    let metrics = ServerMetrics()
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
    metrics.observe(hasher: hasher)

    let router = Router(context: FHIRRequestContext.self)
    router.add(middleware: RequestAccountingMiddleware<FHIRLimits>(surface: "fhir", metrics: metrics))
    router.add(middleware: FHIRErrorMiddleware())
    PractitionerController(provisioner: provisioner, database: database, publicBaseURL: configuration.publicBaseURL, metrics: metrics)
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
    let keyBytes = try SecretBox.loadOrCreateKey(path: configuration.secretKeyPath)
    let web = try makeWebServices(configuration, database: database, hasher: hasher, keyBytes: keyBytes, certificateChain: certificateChain,
                                  privateKey: privateKey, metrics: metrics, logger: logger, onWebListening: onWebListening,
                                  onForwardAuthListening: onForwardAuthListening)
    app.addServices(web.services)

    var presented = try certificateChain.prefix(1).map { (name: "fhir", certificate: try Certificate(derEncoded: $0.toDERBytes())) }
    presented += try web.certificateChain.prefix(1).map { (name: "web", certificate: try Certificate(derEncoded: $0.toDERBytes())) }
    let readiness = ReadinessProbe(database: database, crlStore: crlStore, serverCertificates: presented)
    let (adminToken, created) = try AdminToken.load(path: configuration.adminTokenPath)
    if created { logger.notice("admin token generated (read it from the file; it is never logged)", metadata: ["file": "\(configuration.adminTokenPath)"]) }
    let adminRouter = Router(context: AdminRequestContext.self)
    adminRouter.add(middleware: RequestAccountingMiddleware<AdminLimits>(surface: "admin", metrics: metrics))
    adminRouter.get("static/style.css") { _, _ in
        Response(status: .ok, headers: [.contentType: "text/css; charset=utf-8"], body: ResponseBody(byteBuffer: ByteBuffer(string: Pages.stylesheet)))
    }
    AdminController(administration: VendorAdministration(database: database, sessionConfiguration: web.sessionConfiguration),
                    readiness: readiness, metrics: metrics, token: adminToken, secretKey: keyBytes)
        .addRoutes(to: adminRouter)
    let adminServer: HTTPServerBuilder
    if configuration.adminTLS {
        adminServer = try .tls(.http1(), tlsConfiguration: web.tls)
    } else {
        guard isLoopback(configuration.adminHost) else {
            throw ConfigurationError(description: "--admin-address \(configuration.adminHost) is not a loopback address: add --admin-tls (the admin token must not cross a network in clear)")
        }
        adminServer = .http1()
    }
    app.addServices(Application(
        router: adminRouter, server: adminServer,
        configuration: .init(address: .hostname(configuration.adminHost, port: configuration.adminPort), serverName: nil),
        onServerRunning: { channel in await onAdminListening(channel.localAddress?.port ?? 0) },
        logger: logger
    ))
    return app
}

/// Whether a listener address only accepts connections from this machine.
func isLoopback(_ host: String) -> Bool {
    host == "localhost" || CIDR("127.0.0.0/8")!.contains(host) || CIDR("::1/128")!.contains(host)
}

/// What the web listener hands back to the application builder.
struct WebServices {
    var services: [any Service]
    var certificateChain: [NIOSSLCertificate]
    var tls: TLSConfiguration
    var sessionConfiguration: SessionConfiguration
}

/// The regulators' HTTPS listener (sign-in, first-sign-in steps, "Mon compte") and the mailer,
/// as services of the main application so they start and stop with it.
func makeWebServices(
    _ configuration: ServerConfiguration, database: AccountDatabase, hasher: PasswordHasher, keyBytes: [UInt8],
    certificateChain: [NIOSSLCertificate], privateKey: NIOSSLPrivateKey, metrics: ServerMetrics, logger: Logger,
    onWebListening: @escaping @Sendable (Int) async -> Void,
    onForwardAuthListening: @escaping @Sendable (Int) async -> Void
) throws -> WebServices {
    let policy = PasswordPolicy()
    guard policy.isLoaded else {
        throw ConfigurationError(description: "the common-password list (account-server_Accounts.resources) is missing next to the executable")
    }
    let box = try SecretBox(key: keyBytes)
    var credentialConfiguration = CredentialConfiguration()
    credentialConfiguration.lockout = configuration.lockout
    let credentials = try CredentialStore(database: database, hasher: hasher, box: box, policy: policy, configuration: credentialConfiguration)
    var sessionConfiguration = SessionConfiguration()
    sessionConfiguration.idleTimeout = configuration.sessionIdleTimeout
    sessionConfiguration.absoluteTimeout = configuration.sessionAbsoluteTimeout
    let sessions = SessionStore(database: database, configuration: sessionConfiguration)
    let cguVersion = configuration.cguVersion ?? String(SecretToken.hash(configuration.cguText).prefix(12))
    let habilitation = HabilitationService(database: database, sessions: sessions, cguVersion: cguVersion)

    let publicURL = (configuration.publicURL ?? "https://localhost:\(configuration.webPort)").trimmingSuffix("/")
    guard let publicHost = URLComponents(string: publicURL)?.host else {
        throw ConfigurationError(description: "--public-url must be an absolute https URL, got \(publicURL)")
    }
    let webConfiguration = WebConfiguration(
        publicURL: publicURL,
        acceptedOrigins: Set(configuration.acceptedOrigins),
        allowedReturnHosts: Set((configuration.allowedReturnHosts.isEmpty ? [publicHost] : configuration.allowedReturnHosts).map { $0.lowercased() }),
        cguText: configuration.cguText, cguVersion: cguVersion, totpIssuer: configuration.totpIssuer
    )
    let controller = WebController(
        configuration: webConfiguration, credentials: credentials, sessions: sessions, habilitation: habilitation,
        csrf: CSRFProtection(key: keyBytes, publicOrigin: webConfiguration.publicOrigin),
        limiter: RateLimiter(perMinute: configuration.rateLimitPerMinute, burst: configuration.rateLimitPerMinute),
        metrics: metrics
    )
    var trustedProxies: [CIDR] = []
    for text in configuration.trustedProxies {
        guard let cidr = CIDR(text) else { throw ConfigurationError(description: "--trusted-proxy \(text) is not an address or CIDR") }
        trustedProxies.append(cidr)
    }
    let router = Router(context: WebRequestContext.self)
    router.add(middleware: RequestAccountingMiddleware<WebLimits>(surface: "web", metrics: metrics))
    router.add(middleware: ClientAddressMiddleware<WebLimits>(trustedProxies: trustedProxies))
    router.add(middleware: WebErrorMiddleware())
    router.get("healthz") { _, _ in AdminController.json(.object(["status": .string("alive")])) }
    controller.addRoutes(to: router)
    let forwardAuth = ForwardAuthResponder(habilitation: habilitation, configuration: webConfiguration, metrics: metrics)
    ForwardAuthController(responder: forwardAuth).addRoutes(to: router)

    var webChain = certificateChain
    var tls = TLSConfiguration.makeServerConfiguration(certificateChain: certificateChain.map { .certificate($0) }, privateKey: .privateKey(privateKey))
    if let certificate = configuration.webTLSCertificatePath, let key = configuration.webTLSKeyPath {
        webChain = try NIOSSLCertificate.fromPEMFile(certificate)
        tls = TLSConfiguration.makeServerConfiguration(certificateChain: webChain.map { .certificate($0) },
                                                       privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
    }
    tls.minimumTLSVersion = .tlsv12
    tls.applicationProtocols = ["http/1.1"]
    let webApp = Application(
        router: router,
        server: try .tls(.http1(), tlsConfiguration: tls),
        configuration: .init(address: .hostname(configuration.webHost, port: configuration.webPort), serverName: nil),
        onServerRunning: { channel in await onWebListening(channel.localAddress?.port ?? 0) },
        logger: logger
    )
    let transport: (any MailTransport)?
    if let smtp = configuration.smtpURL {
        transport = try SMTPTransport(url: smtp, heloName: publicHost)
    } else if let command = configuration.sendmailCommand, !command.isEmpty {
        transport = SendmailTransport(command: command)
    } else {
        transport = nil
    }
    let mailer = MailerService(database: database, transport: transport, from: configuration.mailFrom ?? "no-reply@\(publicHost)",
                               pollInterval: configuration.mailPollInterval, logger: logger)
    guard configuration.forwardAuthTLS || isLoopback(configuration.forwardAuthHost) else {
        throw ConfigurationError(description: "--forward-auth-address \(configuration.forwardAuthHost) is not a loopback address: add --forward-auth-tls (session cookies must not cross a network in clear)")
    }
    let forwardAuthListener = ForwardAuthListener(
        host: configuration.forwardAuthHost, port: configuration.forwardAuthPort, databasePath: configuration.databasePath,
        responder: forwardAuth, sslContext: configuration.forwardAuthTLS ? try NIOSSLContext(configuration: tls) : nil,
        logger: logger, onListening: onForwardAuthListening)
    return WebServices(services: [webApp, mailer, forwardAuthListener], certificateChain: webChain, tls: tls, sessionConfiguration: sessionConfiguration)
}

extension String {
    func trimmingSuffix(_ suffix: String) -> String {
        hasSuffix(suffix) ? String(dropLast(suffix.count)) : self
    }
}

/// Unknown pages and unexpected errors of the web surface get a readable French page; no
/// internal detail leaks.
struct WebErrorMiddleware: RouterMiddleware {
    typealias Context = WebRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError {
            switch error.status {
            case .notFound, .methodNotAllowed:
                return WebController.page(Pages.error("Page introuvable", "Cette page n’existe pas."), status: .notFound)
            case .contentTooLarge:
                return WebController.page(Pages.error("Formulaire trop volumineux", "Le formulaire envoyé est trop volumineux."), status: .contentTooLarge)
            default:
                return WebController.page(Pages.error("Requête invalide", "La requête n’a pas pu être traitée."), status: .badRequest)
            }
        } catch {
            context.logger.error("unexpected error on the web surface", metadata: ["error": "\(error)"])
            return WebController.page(Pages.error("Erreur", "Une erreur est survenue (référence \(context.requestID)). Réessayez dans un instant."), status: .internalServerError)
        }
    }
}
