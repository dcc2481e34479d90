import Accounts
import Habilitation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore

/// The FHIR surface (INT_R02, and the INT_R01 relay when an upstream is configured): its
/// router, middleware in order (accounting, OperationOutcome errors, caller authentication,
/// upstream routing), and the listener's channel for the caller authentication mode.
func makeFHIRSurface(_ configuration: ServerConfiguration, callerMode: CallerAuthenticationMode, verifier: ClientCertificateVerifier,
                     material: TLSMaterial, provisioner: Provisioner, database: AccountDatabase, upstream: SlotSearchUpstream?,
                     metrics: ServerMetrics, logger: Logger) throws -> (Router<FHIRRequestContext>, HTTPServerBuilder) {
    let router = Router(context: FHIRRequestContext.self)
    router.add(middleware: RequestAccountingMiddleware<FHIRLimits>(surface: "fhir", metrics: metrics))
    router.add(middleware: FHIRErrorMiddleware())
    router.add(middleware: CallerAuthenticationMiddleware(mode: callerMode, verifier: verifier))
    if let upstream {
        router.add(middleware: UpstreamRoutingMiddleware(upstream: upstream, directory: AccountDirectory(database: database)))
    }
    PractitionerController(provisioner: provisioner, directory: AccountDirectory(database: database), publicBaseURL: configuration.fhir.publicBaseURL, metrics: metrics,
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
    case .forwardedCertificate where configuration.fhir.proxyTLS:
        server = HTTPServerBuilder { responder in
            ReloadableTLSChannel(base: RequestTimeoutChannel(base: HTTP1Channel(responder: responder, configuration: idle), timeout: requestTimeout, logger: logger),
                                 context: { material.current.fhirServerOnly })
        }
    case .forwardedCertificate:
        guard isLoopback(configuration.fhir.host) else {
            throw ConfigurationError(description: "--fhir-address \(configuration.fhir.host) is not a loopback address: add --fhir-proxy-tls so the proxy reaches this listener over TLS")
        }
        server = HTTPServerBuilder { responder in
            RequestTimeoutChannel(base: HTTP1Channel(responder: responder, configuration: idle), timeout: requestTimeout, logger: logger)
        }
    }
    return (router, server)
}
