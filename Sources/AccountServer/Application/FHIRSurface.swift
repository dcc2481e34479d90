import Accounts
import Habilitation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore

/// The FHIR surface (INT_R02, and the INT_R01 relay when an upstream is configured): its
/// router, middleware in order (accounting, OperationOutcome errors, caller authentication),
/// and the listener's channel for the caller authentication mode. With an upstream, the
/// relay's handler sits in every connection's pipeline in front of the router
/// (``UpstreamRelayChannel``): the router only ever sees INT_R02 requests.
func makeFHIRSurface(_ configuration: ServerConfiguration, authenticator: CallerAuthenticator, verifier: ClientCertificateVerifier,
                     material: TLSMaterial, provisioner: Provisioner, database: AccountDatabase, upstream: SlotSearchUpstream?,
                     relay: UpstreamRelay?, metrics: ServerMetrics, logger: Logger) throws -> (Router<FHIRRequestContext>, HTTPServerBuilder) {
    let callerMode = authenticator.mode
    let router = Router(context: FHIRRequestContext.self)
    router.add(middleware: RequestAccountingMiddleware<FHIRLimits>(surface: "fhir", metrics: metrics))
    router.add(middleware: FHIRErrorMiddleware())
    router.add(middleware: CallerAuthenticationMiddleware(authenticator: authenticator))
    PractitionerController(provisioner: provisioner, directory: AccountDirectory(database: database), publicBaseURL: configuration.fhir.publicBaseURL, metrics: metrics,
                           upstream: upstream)
        .addRoutes(to: router)

    // With an upstream, the relay's handler keeps the idle time (Hummingbird's would count
    // only the router's requests).
    let idleTimeout = TimeAmount.nanoseconds(configuration.fhir.idleTimeout.components.seconds * 1_000_000_000
        + configuration.fhir.idleTimeout.components.attoseconds / 1_000_000_000)
    let idle = HTTP1Channel.Configuration(additionalChannelHandlers: [ClosingAnswerHandler(), LastModifiedDateHandler()],
                                          idleTimeout: relay == nil ? idleTimeout : nil)
    let requestTimeout = configuration.requestReceiveTimeout
    /// HTTP/1 with the receive timeout, and the relay when there is an upstream.
    @Sendable func http(_ responder: @escaping HTTPChannelHandler.Responder) -> RequestTimeoutChannel<UpstreamRelayChannel<HTTP1Channel>> {
        RequestTimeoutChannel(base: UpstreamRelayChannel(base: HTTP1Channel(responder: responder, configuration: idle), relay: relay,
                                                         idleTimeout: idleTimeout),
                              timeout: requestTimeout, logger: logger)
    }
    // Counted before TLS (a handshake costs the server more than the client); the proxy of
    // topology 1 carries every call of the SAS and is not counted.
    var exempt = try CIDR.list(configuration.connectionLimitExempt, flag: "--connection-limit-exempt")
    if case .forwardedCertificate(_, let proxies, _) = callerMode { exempt += proxies }
    let connections = ConnectionLimiter(listener: "fhir", perClient: configuration.maxConnectionsPerClient, exempt: exempt, metrics: metrics, logger: logger)
    let server: HTTPServerBuilder
    switch callerMode {
    case .mutualTLS:
        let chains = PresentedChainCache()
        server = HTTPServerBuilder { responder in
            ConnectionLimitChannel(base: MutualTLSChannel(base: http(responder), sslContext: { material.current.fhirMutual }, verifier: verifier, chains: chains, logger: logger),
                                   limiter: connections)
        }
    case .forwardedCertificate(_, _, let proxy?):
        let chains = PresentedChainCache()
        server = HTTPServerBuilder { responder in
            ConnectionLimitChannel(base: MutualTLSChannel(base: http(responder), sslContext: { material.current.fhirProxyMutual! }, verifier: proxy, chains: chains, logger: logger),
                                   limiter: connections)
        }
    case .forwardedCertificate where configuration.fhir.proxyTLS:
        server = HTTPServerBuilder { responder in
            ConnectionLimitChannel(base: ReloadableTLSChannel(base: http(responder), context: { material.current.fhirServerOnly }), limiter: connections)
        }
    case .forwardedCertificate:
        guard isLoopback(configuration.fhir.host) else {
            throw ConfigurationError(description: "--fhir-address \(configuration.fhir.host) is not a loopback address: add --fhir-proxy-tls so the proxy reaches this listener over TLS")
        }
        server = HTTPServerBuilder { responder in ConnectionLimitChannel(base: http(responder), limiter: connections) }
    }
    return (router, server)
}
