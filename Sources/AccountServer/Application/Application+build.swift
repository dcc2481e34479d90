import Accounts
import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOSSL
import ServiceLifecycle
import Storage
import Habilitation
import AsyncHTTPClient
import OpenIDConnect
import HTTPTypes
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
    let material = try TLSMaterial(paths: .init(certificate: configuration.tlsCertificatePath, key: configuration.tlsKeyPath,
                                                clientCAs: configuration.clientCAPaths,
                                                webCertificate: configuration.webTLSCertificatePath, webKey: configuration.webTLSKeyPath,
                                                proxyClientCAs: configuration.fhirProxyClientCAPaths),
                                   logger: logger)
    let trustRoots = material.current.clientTrustRoots
    guard !configuration.allowedClientCommonNames.isEmpty else {
        throw ConfigurationError(description: "at least one --allowed-client-cn is required: every organisation holding a certificate from the client CA could otherwise call INT_R02")
    }
    let crlStore = try CRLStore(paths: configuration.clientCRLPaths, issuers: trustRoots, allowMissing: configuration.allowMissingCRL, logger: logger)
    let uncovered = crlStore.uncoveredAuthorities.map(\.subject.description)
    if !uncovered.isEmpty {
        guard configuration.allowMissingCRL else {
            throw ConfigurationError(description: """
                no CRL covers the client CA(s) \(uncovered.joined(separator: "; ")): a revoked certificate they issued would be accepted. \
                Give their CRLs with --client-crl, or start with --allow-missing-crl to accept that risk knowingly
                """)
        }
        logger.warning("revocation NOT checked: no CRL for these client CAs (--allow-missing-crl)", metadata: ["cas": "\(uncovered)"])
    }
    let verifier = ClientCertificateVerifier(
        trustRoots: trustRoots,
        allowedCommonNames: Set(configuration.allowedClientCommonNames),
        allowedOrganizationalUnits: Set(configuration.allowedClientOrganizationalUnits),
        crlStore: crlStore, logger: logger
    )
    let proxyVerifier = try proxyVerifier(configuration, roots: material.current.proxyTrustRoots, logger: logger)
    let callerMode = try callerAuthenticationMode(configuration, proxyVerifier: proxyVerifier)

    let database = try await AccountDatabase.open(configuration.database, poolSize: configuration.databasePoolSize, logger: logger)
    let hasher = PasswordHasher(parameters: configuration.argon2, threads: configuration.argon2Threads)
    let provisioner = Provisioner(database: database, hasher: hasher, sessions: SessionLedger(), logger: logger)
    metrics.observe(hasher: hasher)

    let upstream = try configuration.fhirUpstream.map { try SlotSearchUpstream(configuration: $0, metrics: metrics) }
    let router = Router(context: FHIRRequestContext.self)
    router.add(middleware: RequestAccountingMiddleware<FHIRLimits>(surface: "fhir", metrics: metrics))
    router.add(middleware: FHIRErrorMiddleware())
    router.add(middleware: CallerAuthenticationMiddleware(mode: callerMode, verifier: verifier))
    if let upstream {
        router.add(middleware: UpstreamRoutingMiddleware(upstream: upstream, directory: AccountDirectory(database: database)))
    }
    PractitionerController(provisioner: provisioner, directory: AccountDirectory(database: database), publicBaseURL: configuration.publicBaseURL, metrics: metrics,
                           upstream: upstream)
        .addRoutes(to: router)

    let idle = HTTP1Channel.Configuration(idleTimeout: .seconds(120))
    let requestTimeout = configuration.requestReceiveTimeout
    let server: HTTPServerBuilder
    switch callerMode {
    case .mutualTLS:
        let chains = PresentedChainCache()
        server = HTTPServerBuilder { responder in
            MutualTLSChannel(base: RequestTimeoutChannel(base: HTTP1Channel(responder: responder, configuration: idle), timeout: requestTimeout, logger: logger),
                             sslContext: { material.current.fhirMutual }, verifier: verifier, chains: chains, logger: logger)
        }
    case .forwardedCertificate(_, _, let proxy?):
        let chains = PresentedChainCache()
        server = HTTPServerBuilder { responder in
            MutualTLSChannel(base: RequestTimeoutChannel(base: HTTP1Channel(responder: responder, configuration: idle), timeout: requestTimeout, logger: logger),
                             sslContext: { material.current.fhirProxyMutual! }, verifier: proxy, chains: chains, logger: logger)
        }
    case .forwardedCertificate where configuration.fhirProxyTLS:
        server = HTTPServerBuilder { responder in
            ReloadableTLSChannel(base: RequestTimeoutChannel(base: HTTP1Channel(responder: responder, configuration: idle), timeout: requestTimeout, logger: logger),
                                 context: { material.current.fhirServerOnly })
        }
    case .forwardedCertificate:
        guard isLoopback(configuration.fhirHost) else {
            throw ConfigurationError(description: "--fhir-address \(configuration.fhirHost) is not a loopback address: add --fhir-proxy-tls so the proxy reaches this listener over TLS")
        }
        server = HTTPServerBuilder { responder in
            RequestTimeoutChannel(base: HTTP1Channel(responder: responder, configuration: idle), timeout: requestTimeout, logger: logger)
        }
    }
    var app = Application(
        router: router,
        server: server,
        configuration: .init(address: .hostname(configuration.fhirHost, port: configuration.fhirPort), serverName: nil),
        onServerRunning: { channel in await onFHIRListening(channel.localAddress?.port ?? 0) },
        logger: logger
    )
    app.addServices(ReloadService(material: material, verifier: verifier, crlStore: crlStore, proxyVerifier: proxyVerifier,
                                  pollInterval: configuration.crlPollInterval,
                                  metrics: metrics, logger: logger),
                    PasswordHasherService(hasher: hasher), DatabaseService(database: database))
    if let upstream { app.addServices(UpstreamClientService(upstream: upstream)) }
    let keyBytes = try SecretBox.loadOrCreateKey(path: configuration.secretKeyPath)
    let web = try await makeWebServices(configuration, database: database, hasher: hasher, keyBytes: keyBytes, material: material,
                                  metrics: metrics, logger: logger, onWebListening: onWebListening,
                                  onForwardAuthListening: onForwardAuthListening)
    app.addServices(web.services)

    let readiness = ReadinessProbe(database: database, crlStore: crlStore, serverCertificates: { material.current.presented },
                                   provider: web.provider)
    let (adminToken, created) = try AdminToken.load(path: configuration.adminTokenPath)
    if created { logger.notice("admin token generated (read it from the file; it is never logged)", metadata: ["file": "\(configuration.adminTokenPath)"]) }
    let adminRouter = Router(context: AdminRequestContext.self)
    adminRouter.add(middleware: RequestAccountingMiddleware<AdminLimits>(surface: "admin", metrics: metrics))
    if !configuration.adminTLS {
        adminRouter.add(middleware: LoopbackHostMiddleware())
    }
    adminRouter.get("static/style.css") { _, _ in
        Response(status: .ok, headers: [.contentType: "text/css; charset=utf-8"], body: ResponseBody(byteBuffer: ByteBuffer(string: Pages.stylesheet)))
    }
    AdminController(administration: VendorAdministration(database: database, sessionConfiguration: web.sessionConfiguration),
                    readiness: readiness, metrics: metrics, token: adminToken, secretKey: keyBytes, secure: configuration.adminTLS)
        .addRoutes(to: adminRouter)
    let adminServer: HTTPServerBuilder
    if configuration.adminTLS {
        adminServer = HTTPServerBuilder { responder in
            ReloadableTLSChannel(base: HTTP1Channel(responder: responder), context: { material.current.web })
        }
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

/// Mutual TLS here, or a certificate forwarded by a trusted TLS-terminating proxy.
/// The verifier of the proxy's own client certificate (`--fhir-proxy-client-ca`), if the
/// proxy authenticates by mutual TLS.
func proxyVerifier(_ configuration: ServerConfiguration, roots: [Certificate], logger: Logger) throws -> ClientCertificateVerifier? {
    guard !configuration.fhirProxyClientCAPaths.isEmpty else {
        guard configuration.fhirProxyClientNames.isEmpty, configuration.fhirProxyClientCRLPaths.isEmpty else {
            throw ConfigurationError(description: "--fhir-proxy-client-cn and --fhir-proxy-client-crl need --fhir-proxy-client-ca")
        }
        return nil
    }
    guard configuration.fhirClientCertificateHeader != nil else {
        throw ConfigurationError(description: "--fhir-proxy-client-ca authenticates the proxy that forwards certificates: it needs --fhir-client-certificate-header")
    }
    guard !configuration.fhirProxyClientNames.isEmpty else {
        throw ConfigurationError(description: "--fhir-proxy-client-ca needs at least one --fhir-proxy-client-cn: the name of the proxy's certificate")
    }
    let crls = try CRLStore(paths: configuration.fhirProxyClientCRLPaths, issuers: roots,
                            allowMissing: configuration.fhirProxyClientCRLPaths.isEmpty, logger: logger)
    if configuration.fhirProxyClientCRLPaths.isEmpty {
        logger.notice("the proxy's client certificate is checked against --fhir-proxy-client-ca without a CRL (rotate the proxy CA to revoke)")
    }
    return ClientCertificateVerifier(trustRoots: roots, allowedCommonNames: Set(configuration.fhirProxyClientNames),
                                     allowedOrganizationalUnits: [], crlStore: crls, logger: logger)
}

func callerAuthenticationMode(_ configuration: ServerConfiguration, proxyVerifier: ClientCertificateVerifier? = nil) throws -> CallerAuthenticationMode {
    guard let headerName = configuration.fhirClientCertificateHeader else {
        guard configuration.fhirTrustedProxies.isEmpty else {
            throw ConfigurationError(description: "--fhir-trusted-proxy needs --fhir-client-certificate-header (the header the proxy puts the verified client certificate in)")
        }
        return .mutualTLS
    }
    guard let header = HTTPField.Name(headerName) else {
        throw ConfigurationError(description: "--fhir-client-certificate-header \(headerName) is not a valid header name")
    }
    guard !configuration.fhirTrustedProxies.isEmpty else {
        throw ConfigurationError(description: "--fhir-client-certificate-header needs at least one --fhir-trusted-proxy: a certificate header is only believed from the proxy that verified it")
    }
    var proxies: [CIDR] = []
    for text in configuration.fhirTrustedProxies {
        guard let cidr = CIDR(text) else { throw ConfigurationError(description: "--fhir-trusted-proxy \(text) is not an address or CIDR") }
        proxies.append(cidr)
    }
    return .forwardedCertificate(header: header, trustedProxies: proxies, proxy: proxyVerifier)
}

/// Whether a listener address only accepts connections from this machine.
func isLoopback(_ host: String) -> Bool {
    host == "localhost" || CIDR("127.0.0.0/8")!.contains(host) || CIDR("::1/128")!.contains(host)
}

/// What the web listener hands back to the application builder.
struct WebServices {
    var services: [any Service]
    var sessionConfiguration: SessionConfiguration
    var provider: RelyingParty?
}

/// The regulators' HTTPS listener (sign-in, first-sign-in steps, "Mon compte") and the mailer,
/// as services of the main application so they start and stop with it.
func makeWebServices(
    _ configuration: ServerConfiguration, database: AccountDatabase, hasher: PasswordHasher, keyBytes: [UInt8],
    material: TLSMaterial, metrics: ServerMetrics, logger: Logger,
    onWebListening: @escaping @Sendable (Int) async -> Void,
    onForwardAuthListening: @escaping @Sendable (Int) async -> Void
) async throws -> WebServices {
    let policy = PasswordPolicy()
    guard policy.isLoaded else {
        throw ConfigurationError(description: "the common-password list (account-server_Accounts.resources) is missing next to the executable")
    }
    let box = try SecretBox(key: keyBytes)
    var credentialConfiguration = CredentialConfiguration()
    credentialConfiguration.lockout = configuration.lockout
    let credentials = try CredentialStore(database: database, hasher: hasher, box: box, sessions: SessionLedger(), policy: policy, configuration: credentialConfiguration)
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
    var controller = WebController(
        configuration: webConfiguration, credentials: credentials, sessions: sessions, habilitation: habilitation,
        csrf: CSRFProtection(key: keyBytes, publicOrigin: webConfiguration.publicOrigin),
        limiter: RateLimiter(perMinute: configuration.rateLimitPerMinute, burst: configuration.rateLimitPerMinute),
        metrics: metrics
    )
    var providerServices: [any Service] = []
    if let sso = configuration.sso {
        let (signIn, service) = try await makeProviderSignIn(sso, publicURL: publicURL, keyBytes: keyBytes, box: box, logger: logger)
        controller.provider = signIn
        providerServices.append(service)
    }
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

    let webApp = Application(
        router: router,
        server: HTTPServerBuilder { responder in
            ReloadableTLSChannel(base: RequestTimeoutChannel(base: HTTP1Channel(responder: responder), timeout: configuration.requestReceiveTimeout, logger: logger),
                                 context: { material.current.web })
        },
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
    let outbox = MailOutbox(box: box)
    let queue = MailQueue(database: database, outbox: outbox)
    let sealed = try await queue.sealLegacyBodies()  // once, at start, before any listener
    if sealed > 0 {
        // secure_delete only zeroes what is deleted from now on: rewrite the file once so the
        // clear bodies an earlier version stored or scrubbed leave no trace in free pages.
        try await database.compact()
        logger.notice("sealed outbox bodies queued in clear by an earlier version, then vacuumed the database", metadata: ["count": "\(sealed)"])
    }
    let mailer = MailerService(queue: queue, transport: transport, from: configuration.mailFrom ?? "no-reply@\(publicHost)",
                               pollInterval: configuration.mailPollInterval, logger: logger)
    guard configuration.forwardAuthTLS || isLoopback(configuration.forwardAuthHost) else {
        throw ConfigurationError(description: "--forward-auth-address \(configuration.forwardAuthHost) is not a loopback address: add --forward-auth-tls (session cookies must not cross a network in clear)")
    }
    let webContext: @Sendable () -> NIOSSLContext = { material.current.web }
    let forwardAuthContext = configuration.forwardAuthTLS ? webContext : nil
    let forwardAuthListener = ForwardAuthListener(
        host: configuration.forwardAuthHost, port: configuration.forwardAuthPort,
        responder: forwardAuth, sslContext: forwardAuthContext,
        logger: logger, onListening: onForwardAuthListening)
    let retention = RetentionService(sessions: sessions, credentials: credentials, retention: configuration.retention,
                                     interval: configuration.purgeInterval, logger: logger)
    return WebServices(services: [webApp, mailer, forwardAuthListener, retention] + providerServices, sessionConfiguration: sessionConfiguration,
                       provider: controller.provider?.relyingParty)
}

/// The relying party for `--oidc-issuer`, and the service that loads the provider's
/// metadata at start (without holding the start-up back: password sign-in works meanwhile)
/// and closes its HTTP client at stop.
func makeProviderSignIn(_ sso: SSOConfiguration, publicURL: String, keyBytes: [UInt8], box: SecretBox, logger: Logger) async throws
    -> (ProviderSignIn, any Service) {
    guard let issuer = URLComponents(string: sso.issuer), issuer.scheme == "https" || (issuer.scheme == "http" && isLoopback(issuer.host ?? "")),
          issuer.host?.isEmpty == false else {
        throw ConfigurationError(description: "--oidc-issuer must be an https URL, got \(sso.issuer)")
    }
    guard publicURL.hasPrefix("https://") else {
        throw ConfigurationError(description: "--oidc-issuer needs an https --public-url (the redirect URI is derived from it)")
    }
    let authentication: ClientAuthentication
    if let path = sso.clientSecretPath {
        let secret = try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !secret.isEmpty else { throw ConfigurationError(description: "--oidc-client-secret-file \(path) is empty") }
        authentication = .clientSecretBasic(secret: secret)
    } else if let path = sso.clientKeyPath {
        do {
            authentication = .privateKeyJWT(try await ClientAssertionKey.load(pem: try String(contentsOfFile: path, encoding: .utf8), kid: sso.clientKeyID))
        } catch {
            throw ConfigurationError(description: "--oidc-client-key-file \(path) is not an RSA (2048 bits or more) or EC P-256 private key in PEM")
        }
    } else {
        throw ConfigurationError(description: "--oidc-issuer needs --oidc-client-secret-file or --oidc-client-key-file")
    }
    var rpConfiguration = RelyingPartyConfiguration(issuer: sso.issuer, clientID: sso.clientID, clientAuthentication: authentication,
                                                    redirectURI: publicURL + "/connexion/psc/retour", scope: sso.scope,
                                                    acr: sso.acr.isEmpty ? nil : sso.acr)
    rpConfiguration.requestTimeout = 10
    var tls = TLSConfiguration.makeClientConfiguration()
    if let ca = sso.caPath { tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca)) }
    var clientConfiguration = HTTPClient.Configuration(tlsConfiguration: tls)
    // The token endpoint must answer itself: a redirect would carry the code elsewhere.
    clientConfiguration.redirectConfiguration = .disallow
    clientConfiguration.timeout = .init(connect: .seconds(5), read: .seconds(10))
    let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: clientConfiguration)
    let relyingParty = RelyingParty(configuration: rpConfiguration, httpClient: client, logger: logger)
    let signIn = ProviderSignIn(relyingParty: relyingParty, serverKey: keyBytes, box: box, nationalIDClaim: sso.nationalIDClaim,
                                postLogoutRedirectURI: publicURL + "/deconnexion/terminee")
    logger.notice("sign-in through an OpenID Connect provider enabled", metadata: [
        "issuer": "\(sso.issuer)", "client_id": "\(sso.clientID)", "client_authentication": "\(authentication.methodName)",
        "redirect_uri": "\(rpConfiguration.redirectURI)", "acr": "\(sso.acr)",
    ])
    return (signIn, ProviderService(relyingParty: relyingParty, client: client, logger: logger))
}

/// Loads the provider's metadata and keys at start (a failure is logged; the first sign-in
/// retries), and shuts its HTTP client down at stop.
struct ProviderService: Service {
    let relyingParty: RelyingParty
    let client: HTTPClient
    let logger: Logger

    func run() async throws {
        do { try await relyingParty.refresh() } catch {
            logger.error("the OpenID Connect provider could not be read at start (sign-in through it retries on use)", metadata: ["error": "\(error)"])
        }
        try? await gracefulShutdown()
        try await client.shutdown()
    }
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
        } catch is NIOTooManyBytesError {
            // A form sent without Content-Length that grew past the limit.
            return WebController.page(Pages.error("Formulaire trop volumineux", "Le formulaire envoyé est trop volumineux."), status: .contentTooLarge)
        } catch let error as StorageError where error.isTransient {
            context.logger.error("database unavailable on the web surface", metadata: ["error": "\(error)"])
            var response = WebController.page(Pages.error("Service momentanément indisponible",
                                                          "Le service ne peut pas répondre pour l’instant. Réessayez dans quelques secondes."),
                                              status: .serviceUnavailable)
            response.headers[.retryAfter] = "5"
            return response
        } catch {
            context.logger.error("unexpected error on the web surface", metadata: ["error": "\(error)"])
            return WebController.page(Pages.error("Erreur", "Une erreur est survenue (référence \(context.requestID)). Réessayez dans un instant."), status: .internalServerError)
        }
    }
}
