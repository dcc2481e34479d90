import Accounts
import AsyncHTTPClient
import Foundation
import Habilitation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOSSL
import OpenIDConnect
import ServiceLifecycle
import Storage
import X509

/// What the web listener hands back to the application builder.
struct WebServices {
    var services: [any Service]
    var sessionConfiguration: SessionConfiguration
    var provider: RelyingParty?
}

/// The regulators' HTTPS listener (sign-in, first-sign-in steps, "Mon compte") and the mailer,
/// as services of the main application so they start and stop with it.
func makeWebServices(
    _ configuration: ServerConfiguration, database: AccountDatabase, opened: OpenedResources, hasher: PasswordHasher, keyBytes: [UInt8],
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
    credentialConfiguration.hashQueueLimit = configuration.argon2QueueLimit
    let credentials = try CredentialStore(database: database, hasher: hasher, box: box, sessions: SessionLedger(idleTimeout: configuration.sessionIdleTimeout),
                                          policy: policy, configuration: credentialConfiguration)
    var sessionConfiguration = SessionConfiguration()
    sessionConfiguration.idleTimeout = configuration.sessionIdleTimeout
    sessionConfiguration.absoluteTimeout = configuration.sessionAbsoluteTimeout
    let sessions = SessionStore(database: database, serverKey: keyBytes, configuration: sessionConfiguration)
    let cguVersion = configuration.cguVersion ?? String(SecretToken.hash(configuration.cguText).prefix(12))
    let habilitation = HabilitationService(database: database, sessions: sessions, cguVersion: cguVersion)
    metrics.observe(habilitation: habilitation)

    let publicURL = (configuration.web.publicURL ?? "https://localhost:\(configuration.web.port)").trimmingSuffix("/")
    // https only: reset links are mailed with it, and cookies are `Secure`.
    guard let components = URLComponents(string: publicURL), components.scheme?.lowercased() == "https",
          let publicHost = components.host, !publicHost.isEmpty, components.user == nil, components.password == nil else {
        throw ConfigurationError(description: "--public-url must be an absolute https URL without a user or password, got \(shownURL(publicURL))")
    }
    let webConfiguration = WebConfiguration(
        publicURL: publicURL,
        acceptedOrigins: Set(configuration.acceptedOrigins),
        allowedReturnHosts: Set((configuration.allowedReturnHosts.isEmpty ? [components.port.map { "\(publicHost):\($0)" } ?? publicHost]
                                                                         : configuration.allowedReturnHosts).map { $0.lowercased() }),
        cguText: configuration.cguText, cguVersion: cguVersion, totpIssuer: configuration.totpIssuer
    )
    let resetRequests = BackgroundWork(capacity: 1_024, concurrency: 4)
    var controller = WebController(
        configuration: webConfiguration, credentials: credentials, sessions: sessions, habilitation: habilitation,
        csrf: CSRFProtection(key: keyBytes, publicOrigin: webConfiguration.publicOrigin),
        limiter: RateLimiter(perMinute: configuration.rateLimitPerMinute, burst: configuration.rateLimitPerMinute,
                             clock: configuration.rateLimitClock),
        metrics: metrics, resetRequests: resetRequests
    )
    var providerServices: [any Service] = []
    if let sso = configuration.sso {
        let (signIn, service) = try await makeProviderSignIn(sso, publicURL: publicURL, keyBytes: keyBytes, box: box, logger: logger)
        opened.closeOnFailure { try? await service.client.shutdown() }
        controller.provider = signIn
        providerServices.append(service)
    }
    let trustedProxies = try CIDR.list(configuration.web.trustedProxies, flag: "--trusted-proxy")
    let router = Router(context: WebRequestContext.self)
    router.add(middleware: RequestAccountingMiddleware<WebLimits>(surface: "web", metrics: metrics))
    router.add(middleware: ClientAddressMiddleware<WebLimits>(trustedProxies: trustedProxies))
    router.add(middleware: PageFooterMiddleware<WebRequestContext>(footer: configuration.footer))
    router.add(middleware: WebErrorMiddleware())
    router.add(middleware: UnstorableInputMiddleware<WebRequestContext>())
    router.get("healthz") { _, _ in AdminController.json(.object(["status": .string("alive")])) }
    controller.addRoutes(to: router)
    let forwardAuth = ForwardAuthResponder(habilitation: habilitation, configuration: webConfiguration, metrics: metrics)

    // Browsers behind a trusted proxy arrive through its connections: it is not counted.
    let connections = ConnectionLimiter(listener: "web", perClient: configuration.maxConnectionsPerClient,
                                        exempt: try trustedProxies + CIDR.list(configuration.connectionLimitExempt, flag: "--connection-limit-exempt"),
                                        metrics: metrics, logger: logger)
    let webApp = Application(
        router: router,
        server: HTTPServerBuilder { responder in
            // Idle keep-alive connections close after 120 s, as on the FHIR listener.
            // `/forward-auth` is answered on the connection's event loop, before the router.
            // An answer that says `Connection: close` (a form declared too large, whose body
            // is not read) ends the connection, as on the FHIR listener.
            ConnectionLimitChannel(
                base: ReloadableTLSChannel(base: RequestTimeoutChannel(base: ForwardAuthRouteChannel(base: HTTP1Channel(responder: responder, configuration: .init(additionalChannelHandlers: [ClosingAnswerHandler()], idleTimeout: .seconds(120))),
                                                                                                     forwardAuth: forwardAuth, logger: logger),
                                                                       timeout: configuration.requestReceiveTimeout, logger: logger),
                                           context: { material.current.web }),
                limiter: connections)
        },
        configuration: .init(address: .hostname(configuration.web.host, port: configuration.web.port), serverName: nil),
        onServerRunning: { channel in await onWebListening(channel.localAddress?.port ?? 0) },
        logger: logger
    )
    let transport: (any MailTransport)?
    if let smtp = configuration.smtpURL {
        transport = try SMTPTransport(url: smtp, heloName: publicHost, allowCleartext: configuration.smtpAllowCleartext)
        if configuration.smtpAllowCleartext, let mail = transport as? SMTPTransport, !mail.implicitTLS, !isLoopback(mail.host) {
            logger.warning("reset links are sent to the mail relay WITHOUT TLS (--smtp-allow-cleartext)", metadata: ["relay": "\(mail.host)"])
        }
    } else if let command = configuration.sendmailCommand, !command.isEmpty {
        transport = SendmailTransport(command: command)
    } else {
        transport = nil
    }
    let outbox = MailOutbox(box: box)
    let queue = MailQueue(database: database, outbox: outbox)
    // Once, at start, before any listener: what earlier versions stored readably is sealed
    // (outbox bodies) or keyed (recovery codes).
    let sealed = try await queue.sealLegacyBodies()
    let rekeyed = try await credentials.rekeyLegacyRecoveryCodes()
    if sealed + rekeyed > 0 {
        let metadata: Logger.Metadata = ["outbox_bodies": "\(sealed)", "recovery_codes": "\(rekeyed)"]
        if database.engine.kind == .sqlite {
            // secure_delete only zeroes what is deleted from now on: rewrite the file once so the
            // clear bodies and plain code hashes an earlier version stored leave no trace in free pages.
            try await database.compact()
            logger.notice("sealed outbox bodies and keyed recovery codes stored by an earlier version, then compacted the database", metadata: metadata)
        } else {
            // The runtime role may not rewrite tables: the old row versions stay in them until
            // the schema owner does.
            logger.notice("sealed outbox bodies and keyed recovery codes stored by an earlier version; their old row versions stay in the tables until the schema owner runs VACUUM FULL mail_outbox, recovery_code",
                          metadata: metadata)
        }
    }
    let mailer = MailerService(queue: queue, transport: transport, from: configuration.mailFrom ?? "no-reply@\(publicHost)",
                               pollInterval: configuration.mailPollInterval, logger: logger)
    guard configuration.forwardAuth.tls || isLoopback(configuration.forwardAuth.host) else {
        throw ConfigurationError(description: "--forward-auth-address \(configuration.forwardAuth.host) is not a loopback address: add --forward-auth-tls (session cookies must not cross a network in clear)")
    }
    let webContext: @Sendable () -> NIOSSLContext = { material.current.web }
    let forwardAuthContext = configuration.forwardAuth.tls ? webContext : nil
    let forwardAuthListener = ForwardAuthListener(
        host: configuration.forwardAuth.host, port: configuration.forwardAuth.port,
        responder: forwardAuth, sslContext: forwardAuthContext,
        idleTimeout: configuration.forwardAuth.idleTimeout, requestTimeout: configuration.requestReceiveTimeout,
        logger: logger, onListening: onForwardAuthListening)
    let retention = RetentionService(purge: Retention(database: database, sessions: sessions, credentials: credentials),
                                     credentials: credentials, retention: configuration.retention,
                                     interval: configuration.purgeInterval, logger: logger)
    // The reset queue before the listener: it stops after it (reverse order), and drains.
    return WebServices(services: [resetRequests, webApp, mailer, forwardAuthListener, retention] + providerServices, sessionConfiguration: sessionConfiguration,
                       provider: controller.provider?.relyingParty)
}

/// The relying party for `--oidc-issuer`, and the service that loads the provider's
/// metadata at start (without holding the start-up back: password sign-in works meanwhile)
/// and closes its HTTP client at stop.
func makeProviderSignIn(_ sso: SSOConfiguration, publicURL: String, keyBytes: [UInt8], box: SecretBox, logger: Logger) async throws
    -> (ProviderSignIn, ProviderService) {
    guard let issuer = URLComponents(string: sso.issuer), issuer.scheme == "https" || (issuer.scheme == "http" && isLoopback(issuer.host ?? "")),
          issuer.host?.isEmpty == false else {
        throw ConfigurationError(description: "--oidc-issuer must be an https URL, got \(shownURL(sso.issuer))")
    }
    guard publicURL.hasPrefix("https://") else {
        throw ConfigurationError(description: "--oidc-issuer needs an https --public-url (the redirect URI is derived from it)")
    }
    let authentication: ClientAuthentication
    if let path = sso.clientSecretPath {
        let secret = String(decoding: try PrivateFile.readSecret(path: path, what: "the OpenID Connect client secret", allowGroupRead: true), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        guard !secret.isEmpty else { throw ConfigurationError(description: "--oidc-client-secret-file \(path) is empty") }
        authentication = .clientSecretBasic(secret: secret)
    } else if let path = sso.clientKeyPath {
        let pem = String(decoding: try PrivateFile.readSecret(path: path, what: "the OpenID Connect client key", allowGroupRead: true), as: UTF8.self)
        do {
            authentication = .privateKeyJWT(try await ClientAssertionKey.load(pem: pem, kid: sso.clientKeyID))
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
    tls.minimumTLSVersion = .tlsv12
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
    if sso.acr.isEmpty {
        // Pro Santé Connect's sign-ins all carry `eidas1`; an empty value checks none, so a
        // weaker authentication at the provider would open a session here.
        logger.warning("--oidc-acr is empty: no authentication level is asked of the provider, and the ID token's acr is not checked")
    }
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

