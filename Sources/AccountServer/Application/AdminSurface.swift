import Accounts
import Habilitation
import Hummingbird
import HummingbirdCore
import HTTPTypes
import Logging
import NIOCore
import ServiceLifecycle
import Storage

/// The admin surface: the vendor admin's API and page, behind the admin token, on loopback
/// or TLS only.
func makeAdminSurface(_ configuration: ServerConfiguration, database: AccountDatabase, readiness: ReadinessProbe, material: TLSMaterial,
                      sessionConfiguration: SessionConfiguration, secretKey keyBytes: [UInt8], metrics: ServerMetrics, logger: Logger,
                      onAdminListening: @escaping @Sendable (Int) async -> Void) throws -> some Service {
    var adminToken: AdminToken?
    if configuration.admin.sharedToken {
        let (token, created) = try AdminToken.load(path: configuration.admin.tokenPath)
        if created { logger.notice("admin token generated (read it from the file; it is never logged)", metadata: ["file": "\(configuration.admin.tokenPath)"]) }
        adminToken = token
        // Said both ways: a lost --no-shared-admin-token (a drop-in, a misspelt variable)
        // would otherwise bring the shared token back without a word.
        logger.notice("shared admin token accepted (--no-shared-admin-token turns it off)", metadata: ["file": "\(configuration.admin.tokenPath)"])
    } else {
        logger.notice("shared admin token off (--no-shared-admin-token): only the admins' own tokens open the admin API and page")
    }
    let keyring = AdminKeyring(shared: adminToken, namedPath: configuration.admin.namedTokensPath, logger: logger)
    if !keyring.someTokenMayManage {
        logger.warning("no admin token may act: the shared token is off and the admin tokens file holds no manage token (account-server admin token add NAME --role manage)", metadata: ["file": "\(configuration.admin.namedTokensPath ?? "-")"])
    }
    let adminRouter = Router(context: AdminRequestContext.self)
    adminRouter.add(middleware: RequestAccountingMiddleware<AdminLimits>(surface: "admin", metrics: metrics))
    adminRouter.add(middleware: AdminErrorMiddleware())
    if !configuration.admin.tls {
        adminRouter.add(middleware: LoopbackHostMiddleware())
    }
    // The API's own check runs after its token check (`AdminController.addRoutes`).
    adminRouter.add(middleware: UnstorableInputMiddleware<AdminRequestContext>(exceptUnder: "/api/"))
    adminRouter.get("static/style.css") { _, _ in
        Response(status: .ok, headers: [.contentType: "text/css; charset=utf-8"], body: ResponseBody(byteBuffer: ByteBuffer(string: Pages.stylesheet)))
    }
    AdminController(administration: VendorAdministration(database: database, sessionConfiguration: sessionConfiguration),
                    readiness: readiness, metrics: metrics, keyring: keyring, secretKey: keyBytes, secure: configuration.admin.tls,
                    sessions: AdminSessions(idleTimeout: configuration.admin.sessionIdleTimeout,
                                            absoluteTimeout: configuration.admin.sessionAbsoluteTimeout,
                                            clock: configuration.admin.sessionClock),
                    limiterClock: configuration.rateLimitClock)
        .addRoutes(to: adminRouter)
    // The same receive and idle timeouts as the other listeners: a slow sender holds no
    // admin connection either.
    let idle = HTTP1Channel.Configuration(idleTimeout: .seconds(120))
    let requestTimeout = configuration.requestReceiveTimeout
    // The same cap per client as the web and FHIR listeners: an admin listener reachable
    // over the network (`--admin-tls`) is as easy to fill with idle connections, and the
    // admins' access (and /metrics) would go with it.
    let connections = ConnectionLimiter(listener: "admin", perClient: configuration.maxConnectionsPerClient,
                                        exempt: try CIDR.list(configuration.connectionLimitExempt, flag: "--connection-limit-exempt"),
                                        metrics: metrics, logger: logger)
    let adminServer: HTTPServerBuilder
    if configuration.admin.tls {
        adminServer = HTTPServerBuilder { responder in
            ConnectionLimitChannel(
                base: ReloadableTLSChannel(base: RequestTimeoutChannel(base: HTTP1Channel(responder: responder, configuration: idle), timeout: requestTimeout, logger: logger),
                                           context: { material.current.web }),
                limiter: connections)
        }
    } else {
        guard isLoopback(configuration.admin.host) else {
            throw ConfigurationError(description: "--admin-address \(configuration.admin.host) is not a loopback address: add --admin-tls (the admin token must not cross a network in clear)")
        }
        adminServer = HTTPServerBuilder { responder in
            ConnectionLimitChannel(base: RequestTimeoutChannel(base: HTTP1Channel(responder: responder, configuration: idle), timeout: requestTimeout, logger: logger),
                                   limiter: connections)
        }
    }
    return Application(
        router: adminRouter, server: adminServer,
        configuration: .init(address: .hostname(configuration.admin.host, port: configuration.admin.port), serverName: nil),
        onServerRunning: { channel in await onAdminListening(channel.localAddress?.port ?? 0) },
        logger: logger
    )
}

/// Storage failures on the admin surface, answered as the other surfaces answer them rather
/// than as Hummingbird's bare 500: a database restarting or failing over, or transactions that
/// kept colliding, is a 503 with `Retry-After` (what a log shipper or a script retries on);
/// a change whose COMMIT was sent but not answered says it may have been applied.
struct AdminErrorMiddleware: RouterMiddleware {
    typealias Context = AdminRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as UnstorableInput {
            // The API answers JSON; the page, its forms and its sign-in answer a French page.
            context.logger.notice("admin request refused: U+0000 in its \(error.part)")
            if context.endpointPath?.hasPrefix("/api/") == true {
                return AdminController.problem(.badRequest, "the request's \(error.part) holds U+0000 (NUL), which no field accepts; nothing was changed")
            }
            return WebController.unstorableInputPage
        } catch let error as StorageError where error.isTransient {
            context.logger.error("database unavailable on the admin surface", metadata: ["error": "\(error)"])
            let message: String
            if case .outcomeUnknown = error {
                message = "the database connection was lost while the change was being committed: it may or may not have been applied; read the account back before retrying"
            } else {
                message = "the database is unavailable or busy; retry in a moment (nothing was changed)"
            }
            var response = AdminController.problem(.serviceUnavailable, message)
            response.headers[.retryAfter] = "1"
            return response
        } catch let error as any HTTPResponseError {
            // Refusals made around the handlers (a body past 64 KiB: NIOTooManyBytesError,
            // 413) keep their status and their headers (`Allow`, `Retry-After`,
            // `WWW-Authenticate`: what a client acts on); the API's are JSON like its own.
            guard context.endpointPath?.hasPrefix("/api/") == true || request.uri.path.hasPrefix("/api/") else {
                return Self.page(for: error)
            }
            context.logger.notice("admin request refused", metadata: ["status": "\(error.status.code)"])
            if error.status.code >= 500 { return AdminController.problem(.internalServerError, "the request could not be handled") }
            var problem = AdminController.problem(error.status, error.status.code == 413
                ? "the body is larger than the API accepts (64 KiB); nothing was changed"
                : "the request was refused (\(error.status.code)); nothing was changed")
            let ownBody: Set<HTTPField.Name> = [.contentType, .contentLength, .contentEncoding, .transferEncoding]
            if let original = try? error.response(from: request, context: context) {
                for field in original.headers where !ownBody.contains(field.name) && problem.headers[field.name] == nil {
                    problem.headers.append(field)
                }
            }
            return problem
        } catch {
            // Anything else (a privilege missing after an upgrade, a statement the database
            // refused): logged with its cause, answered without it, never an empty 500.
            context.logger.error("admin request failed", metadata: ["error": "\(error)"])
            if context.endpointPath?.hasPrefix("/api/") == true || request.uri.path.hasPrefix("/api/") {
                return AdminController.problem(.internalServerError, "the request could not be handled; the server's log has the cause (request id \(context.requestID))")
            }
            return WebController.page(Pages.error("Erreur du serveur", "La requête n’a pas pu être traitée. Le journal du serveur en donne la cause.",
                                                  link: ("/", "Retour")), status: .internalServerError)
        }
    }

    /// A refusal made around the page's handlers (an unknown address, or a method the path
    /// does not take: Hummingbird's router answers 404; a body past 64 KiB: 413) as a short
    /// French page with the pages' headers (CSP, `frame-ancestors 'none'`, `no-store`), not
    /// Hummingbird's bare answer without them.
    static func page(for error: any HTTPResponseError) -> Response {
        let (title, text): (String, String) = switch error.status.code {
        case 404: ("Page introuvable", "Cette adresse n’existe pas sur la page d’administration.")
        case 413: ("Requête trop volumineuse", "La requête dépasse la taille acceptée (64 Kio). Rien n’a été modifié.")
        case 500...: ("Erreur du serveur", "La requête n’a pas pu être traitée. Le journal du serveur en donne la cause.")
        default: ("Requête refusée", "La requête n’a pas été acceptée. Rien n’a été modifié.")
        }
        return WebController.page(Pages.error(title, text, link: ("/", "Retour")),
                                   status: error.status.code >= 500 ? .internalServerError : error.status)
    }
}
