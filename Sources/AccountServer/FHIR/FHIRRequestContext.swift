import Hummingbird
import NIOCore

/// The request context of the FHIR listener: Hummingbird's core storage, the channel (to
/// reach the connection's verified client identity) and a request id for logs and audit.
struct FHIRRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let channel: any Channel
    let requestID: String

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
        requestID = Self.makeRequestID()
        logger[metadataKey: "request_id"] = .string(requestID)
    }

    /// FHIR bodies over 1 MiB are refused with 413 (a Practitioner is about 1 KiB).
    var maxUploadSize: Int { FHIRLimits.maximumBodyBytes }

    /// The caller verified during the TLS handshake.
    func clientIdentity() async -> ClientIdentity? {
        try? await channel.pipeline.handler(type: ClientIdentityHandler.self).get().identity
    }

    static func makeRequestID() -> String {
        var generator = SystemRandomNumberGenerator()
        let value: UInt64 = generator.next()
        let hex = String(value, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }
}

enum FHIRLimits {
    static let maximumBodyBytes = 1 << 20
}
