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
import Synchronization
import X509

/// Builds the whole server from a configuration; `serve` and the integration tests both
/// call this, so tests run the real thing. The composition root: what every surface shares
/// (TLS material and client verification, the database, the argon2 pool, the secret key,
/// metrics) is made here once; each surface is assembled in its own file —
/// ``makeFHIRSurface`` (FHIRSurface.swift), ``makeWebServices`` (the web sign-in and
/// forward-auth listeners, WebSurface.swift) and ``makeAdminSurface`` (AdminSurface.swift).
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
    let material = try TLSMaterial(paths: .init(certificate: configuration.fhir.tlsCertificatePath, key: configuration.fhir.tlsKeyPath,
                                                clientCAs: configuration.fhir.clientCAPaths,
                                                webCertificate: configuration.web.tlsCertificatePath, webKey: configuration.web.tlsKeyPath,
                                                proxyClientCAs: configuration.fhir.proxyClientCAPaths),
                                   logger: logger)
    let trustRoots = material.current.clientTrustRoots
    guard !configuration.fhir.allowedClientCommonNames.isEmpty else {
        throw ConfigurationError(description: "at least one --allowed-client-cn is required: every organisation holding a certificate from the client CA could otherwise call INT_R02")
    }
    // INT_R02 checks the caller's CN *and* OU against allow-lists, and the conformance kit
    // presents a certificate with the right CN and a wrong OU: without the list it was served.
    guard !configuration.fhir.allowedClientOrganizationalUnits.isEmpty else {
        throw ConfigurationError(description: "at least one --allowed-client-ou is required: INT_R02 checks the caller certificate's OU as well as its CN, and a certificate with the allowed CN and another OU would otherwise be served")
    }
    let crlStore = try CRLStore(paths: configuration.fhir.clientCRLPaths, issuers: trustRoots, allowMissing: configuration.fhir.allowMissingCRL, logger: logger)
    let uncovered = crlStore.uncoveredAuthorities.map(\.subject.description)
    if !uncovered.isEmpty {
        guard configuration.fhir.allowMissingCRL else {
            throw ConfigurationError(description: """
                no CRL covers the client CA(s) \(uncovered.joined(separator: "; ")): a revoked certificate they issued would be accepted. \
                Give their CRLs with --client-crl, or start with --allow-missing-crl to accept that risk knowingly
                """)
        }
        logger.warning("revocation NOT checked: no CRL for these client CAs (--allow-missing-crl)", metadata: ["cas": "\(uncovered)"])
    }
    let verifier = ClientCertificateVerifier(
        trustRoots: trustRoots,
        allowedCommonNames: Set(configuration.fhir.allowedClientCommonNames),
        allowedOrganizationalUnits: Set(configuration.fhir.allowedClientOrganizationalUnits),
        crlStore: crlStore, logger: logger
    )
    let proxyVerifier = try proxyVerifier(configuration, roots: material.current.proxyTrustRoots, logger: logger)
    let callerMode = try callerAuthenticationMode(configuration, proxyVerifier: proxyVerifier)

    let database = try await AccountDatabase.open(configuration.database, poolSize: configuration.databasePoolSize,
                                                  keepOpen: configuration.databasePoolMinimum ?? 0, serving: true, logger: logger)
    // From here on, what is opened is closed again if a later step refuses to start: an HTTP
    // client dropped unclosed traps (signal 4) instead of the refusal's message.
    let opened = OpenedResources()
    opened.closeOnFailure { await database.close() }
    do {
        return try await buildOnDatabase(configuration, database: database, opened: opened, material: material, verifier: verifier,
                                         proxyVerifier: proxyVerifier, crlStore: crlStore, callerMode: callerMode, metrics: metrics, logger: logger,
                                         onFHIRListening: onFHIRListening, onWebListening: onWebListening, onAdminListening: onAdminListening,
                                         onForwardAuthListening: onForwardAuthListening)
    } catch {
        await opened.close()
        throw error
    }
}

/// What ``buildApplication(_:logger:onFHIRListening:onWebListening:onAdminListening:onForwardAuthListening:)``
/// opens before it may still refuse to start: closed, in reverse order, when it does.
final class OpenedResources: Sendable {
    private let closers = Mutex<[@Sendable () async -> Void]>([])

    func closeOnFailure(_ closer: @escaping @Sendable () async -> Void) {
        closers.withLock { $0.append(closer) }
    }

    func close() async {
        for closer in closers.withLock({ $0 }).reversed() { await closer() }
    }
}

/// The part of the composition root that runs once the database is open.
private func buildOnDatabase(
    _ configuration: ServerConfiguration, database: AccountDatabase, opened: OpenedResources, material: TLSMaterial,
    verifier: ClientCertificateVerifier, proxyVerifier: ClientCertificateVerifier?, crlStore: CRLStore, callerMode: CallerAuthenticationMode,
    metrics: ServerMetrics, logger: Logger,
    onFHIRListening: @escaping @Sendable (Int) async -> Void, onWebListening: @escaping @Sendable (Int) async -> Void,
    onAdminListening: @escaping @Sendable (Int) async -> Void, onForwardAuthListening: @escaping @Sendable (Int) async -> Void
) async throws -> some ApplicationProtocol {
    let hasher = PasswordHasher(parameters: configuration.argon2, threads: configuration.argon2Threads)
    let provisioner = Provisioner(database: database, hasher: hasher, sessions: SessionLedger(), logger: logger)
    metrics.observe(hasher: hasher)
    metrics.observe(database: database.engine)

    let authenticator = CallerAuthenticator(mode: callerMode, verifier: verifier)
    let relay = try configuration.fhir.upstream.map {
        try UpstreamRelay(configuration: $0, authenticator: authenticator, directory: AccountDirectory(database: database), metrics: metrics, logger: logger)
    }
    if let relay { opened.closeOnFailure { await relay.shutdown() } }
    let upstream = try configuration.fhir.upstream.map { try SlotSearchUpstream(configuration: $0, metrics: metrics) }
    if let upstream { opened.closeOnFailure { try? await upstream.shutdown() } }
    let (router, server) = try makeFHIRSurface(configuration, authenticator: authenticator, verifier: verifier, material: material,
                                               provisioner: provisioner, database: database, upstream: upstream, relay: relay,
                                               metrics: metrics, logger: logger)
    var app = Application(
        router: router,
        server: server,
        configuration: .init(address: .hostname(configuration.fhir.host, port: configuration.fhir.port), serverName: nil),
        onServerRunning: { channel in await onFHIRListening(channel.localAddress?.port ?? 0) },
        logger: logger
    )
    app.addServices(ReloadService(material: material, verifier: verifier, crlStore: crlStore, proxyVerifier: proxyVerifier,
                                  pollInterval: configuration.fhir.crlPollInterval,
                                  metrics: metrics, logger: logger),
                    PasswordHasherService(hasher: hasher), DatabaseService(database: database, logger: logger))
    if let upstream { app.addServices(UpstreamClientService(upstream: upstream, relay: relay)) }
    let keyBytes = try await SecretKeyCheck.loadKey(path: configuration.secretKeyPath, database: database)
    let web = try await makeWebServices(configuration, database: database, opened: opened, hasher: hasher, keyBytes: keyBytes, material: material,
                                  metrics: metrics, logger: logger, onWebListening: onWebListening,
                                  onForwardAuthListening: onForwardAuthListening)
    app.addServices(web.services)

    let readiness = ReadinessProbe(database: database, crlStore: crlStore, serverCertificates: { material.current.presented },
                                   provider: web.provider)
    app.addServices(try makeAdminSurface(configuration, database: database, readiness: readiness, material: material,
                                         sessionConfiguration: web.sessionConfiguration, secretKey: keyBytes, metrics: metrics,
                                         logger: logger, onAdminListening: onAdminListening))
    return app
}

/// Mutual TLS here, or a certificate forwarded by a trusted TLS-terminating proxy.
/// The verifier of the proxy's own client certificate (`--fhir-proxy-client-ca`), if the
/// proxy authenticates by mutual TLS.
func proxyVerifier(_ configuration: ServerConfiguration, roots: [Certificate], logger: Logger) throws -> ClientCertificateVerifier? {
    guard !configuration.fhir.proxyClientCAPaths.isEmpty else {
        guard configuration.fhir.proxyClientNames.isEmpty, configuration.fhir.proxyClientCRLPaths.isEmpty else {
            throw ConfigurationError(description: "--fhir-proxy-client-cn and --fhir-proxy-client-crl need --fhir-proxy-client-ca")
        }
        if configuration.fhir.clientCertificateHeader != nil {
            // Allowed (a proxy that cannot present a certificate), but not the documented
            // set-up: said at every start, so it is a choice and not an omission.
            logger.warning("the proxy that forwards the SAS's certificate is recognised by its address alone (--fhir-trusted-proxy): any process that can connect from that address can send a SAS certificate in the header and act as the SAS; add --fhir-proxy-client-ca and --fhir-proxy-client-cn (docs/deployment.md, topology 1)")
        }
        return nil
    }
    guard configuration.fhir.clientCertificateHeader != nil else {
        throw ConfigurationError(description: "--fhir-proxy-client-ca authenticates the proxy that forwards certificates: it needs --fhir-client-certificate-header")
    }
    guard !configuration.fhir.proxyClientNames.isEmpty else {
        throw ConfigurationError(description: "--fhir-proxy-client-ca needs at least one --fhir-proxy-client-cn: the name of the proxy's certificate")
    }
    let crls = try CRLStore(paths: configuration.fhir.proxyClientCRLPaths, issuers: roots,
                            allowMissing: configuration.fhir.proxyClientCRLPaths.isEmpty, logger: logger)
    if configuration.fhir.proxyClientCRLPaths.isEmpty {
        logger.notice("the proxy's client certificate is checked against --fhir-proxy-client-ca without a CRL (rotate the proxy CA to revoke)")
    }
    return ClientCertificateVerifier(trustRoots: roots, allowedCommonNames: Set(configuration.fhir.proxyClientNames),
                                     allowedOrganizationalUnits: [], crlStore: crls, logger: logger)
}

func callerAuthenticationMode(_ configuration: ServerConfiguration, proxyVerifier: ClientCertificateVerifier? = nil) throws -> CallerAuthenticationMode {
    guard let headerName = configuration.fhir.clientCertificateHeader else {
        guard configuration.fhir.trustedProxies.isEmpty else {
            throw ConfigurationError(description: "--fhir-trusted-proxy needs --fhir-client-certificate-header (the header the proxy puts the verified client certificate in)")
        }
        return .mutualTLS
    }
    guard let header = HTTPField.Name(headerName) else {
        throw ConfigurationError(description: "--fhir-client-certificate-header \(headerName) is not a valid header name")
    }
    guard !configuration.fhir.trustedProxies.isEmpty else {
        throw ConfigurationError(description: "--fhir-client-certificate-header needs at least one --fhir-trusted-proxy: a certificate header is only believed from the proxy that verified it")
    }
    return .forwardedCertificate(header: header, trustedProxies: try CIDR.list(configuration.fhir.trustedProxies, flag: "--fhir-trusted-proxy"),
                                 proxy: proxyVerifier)
}

/// Whether a listener address only accepts connections from this machine.
func isLoopback(_ host: String) -> Bool {
    host == "localhost" || CIDR("127.0.0.0/8")!.contains(host) || CIDR("::1/128")!.contains(host)
}

extension String {
    func trimmingSuffix(_ suffix: String) -> String {
        hasSuffix(suffix) ? String(dropLast(suffix.count)) : self
    }
}

/// Unknown pages and unexpected errors of the web surface get a readable French page; no
/// internal detail leaks. The back-channel logout's client is the provider, not a browser:
/// its refusals stay JSON whatever refuses it (``ProviderSignInController/refusal(for:context:)``).
struct WebErrorMiddleware: RouterMiddleware {
    typealias Context = WebRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch {
            // The matched route, not the address as sent: `//connexion/…` and a trailing `/`
            // are the endpoint too.
            if context.endpointPath == ProviderSignInController.backChannelLogoutPath {
                return ProviderSignInController.refusal(for: error, context: context)
            }
            return Self.page(for: error, context: context)
        }
    }

    static func page(for error: any Error, context: Context) -> Response {
        switch error {
        case let error as HTTPError:
            switch error.status {
            case .notFound, .methodNotAllowed:
                return WebController.page(Pages.error("Page introuvable", "Cette page n’existe pas."), status: .notFound)
            case .contentTooLarge:
                return WebController.page(Pages.error("Formulaire trop volumineux", "Le formulaire envoyé est trop volumineux."), status: .contentTooLarge)
            case .serviceUnavailable:
                var response = WebController.page(Pages.error("Service momentanément indisponible",
                                                              "Le service ne peut pas répondre pour l’instant. Réessayez dans quelques secondes."),
                                                  status: .serviceUnavailable)
                response.headers[.retryAfter] = "5"
                return response
            case let status where status.code >= 500:
                context.logger.error("unexpected error on the web surface", metadata: ["status": "\(status.code)"])
                return WebController.page(Pages.error("Erreur", "Une erreur est survenue (référence \(context.requestID)). Réessayez dans un instant."),
                                          status: .internalServerError)
            default:
                // A refusal of the request, not a failure of the service: the class stays 4xx.
                return WebController.page(Pages.error("Requête invalide", "La requête n’a pas pu être traitée."), status: .badRequest)
            }
        case let error as UnstorableInput:
            context.logger.notice("request refused: U+0000 in its \(error.part)")
            return WebController.unstorableInputPage
        case is NIOTooManyBytesError:
            // A form declared, or grown, past the limit. The rest of its body is not read:
            // the connection closes after the answer.
            var response = WebController.page(Pages.error("Formulaire trop volumineux", "Le formulaire envoyé est trop volumineux."), status: .contentTooLarge)
            response.headers[.connection] = "close"
            return response
        case is PasswordHasher.Busy:
            // Beyond --argon2-queue hashes waiting or running: answered now, not queued.
            context.logger.warning("password hashing queue full: request answered 503")
            var response = WebController.page(Pages.error("Service très sollicité",
                                                          "Le service reçoit trop de connexions en ce moment. Réessayez dans quelques secondes."),
                                              status: .serviceUnavailable)
            response.headers[.retryAfter] = "5"
            return response
        case let error as StorageError where error.isTransient:
            context.logger.error("database unavailable on the web surface", metadata: ["error": "\(error)"])
            var response = WebController.page(Pages.error("Service momentanément indisponible",
                                                          "Le service ne peut pas répondre pour l’instant. Réessayez dans quelques secondes."),
                                              status: .serviceUnavailable)
            response.headers[.retryAfter] = "5"
            return response
        default:
            context.logger.error("unexpected error on the web surface", metadata: ["error": "\(error)"])
            return WebController.page(Pages.error("Erreur", "Une erreur est survenue (référence \(context.requestID)). Réessayez dans un instant."), status: .internalServerError)
        }
    }
}
