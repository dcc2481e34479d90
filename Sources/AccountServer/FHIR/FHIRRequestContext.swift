import Hummingbird
import NIOCore

/// The body limit of one listener.
protocol ListenerLimits: Sendable {
    static var maximumBodyBytes: Int { get }
}

/// The request context of both listeners: Hummingbird's core storage, the channel (client
/// address, and on the FHIR listener the verified client identity) and a request id for logs
/// and audit. Only the body limit differs, so it is a type parameter.
struct ListenerRequestContext<Limits: ListenerLimits>: RequestContext {
    var coreContext: CoreRequestContextStorage
    let channel: any Channel
    let requestID: String
    /// The browser's address as a trusted reverse proxy reports it (`X-Forwarded-For`), set by
    /// ``ClientAddressMiddleware`` only when the peer is one of `--trusted-proxy`.
    var forwardedClientAddress: String?
    /// The FHIR caller, verified from the mTLS handshake or from the certificate a trusted
    /// proxy forwarded; set by ``CallerAuthenticationMiddleware`` before any handler runs.
    var caller: ClientIdentity?
    /// The vendor admin an admin API request comes from (which token it carried); set by
    /// ``AdminAPIAuthenticationMiddleware``. Unused on the other listeners.
    var admin: AdminIdentity?

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
        requestID = Self.makeRequestID()
        logger[metadataKey: "request_id"] = .string(requestID)
    }

    var maxUploadSize: Int { Limits.maximumBodyBytes }

    /// The peer's address, or the browser's behind a trusted proxy: rate limits, audit
    /// events and session records use this.
    var clientAddress: String { forwardedClientAddress ?? peerAddress }

    var peerAddress: String { channel.remoteAddress?.ipAddress ?? "unknown" }

    static func makeRequestID() -> String {
        var generator = SystemRandomNumberGenerator()
        let value: UInt64 = generator.next()
        let hex = String(value, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }
}

/// FHIR bodies over 1 MiB are refused with 413 (a Practitioner is about 1 KiB).
enum FHIRLimits: ListenerLimits {
    static let maximumBodyBytes = 1 << 20
}

/// Forms are small; anything larger is refused.
enum WebLimits: ListenerLimits {
    static let maximumBodyBytes = 16 * 1024
}

typealias FHIRRequestContext = ListenerRequestContext<FHIRLimits>
typealias WebRequestContext = ListenerRequestContext<WebLimits>

extension ListenerRequestContext where Limits == FHIRLimits {
    /// The caller verified during this connection's TLS handshake (or, for a resumed
    /// session, by its re-verification).
    func handshakeIdentity() async -> ClientIdentity? {
        guard let handler = try? await channel.pipeline.handler(type: ClientIdentityHandler.self).get() else { return nil }
        return await handler.identity()
    }

    /// Ends the connection's verified caller (``ClientIdentityHandler/forget()``).
    func forgetHandshakeIdentity() async {
        guard let handler = try? await channel.pipeline.handler(type: ClientIdentityHandler.self).get() else { return }
        handler.forget()
    }
}
