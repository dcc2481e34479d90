import HummingbirdCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import NIOTLS
import SwiftASN1
import X509

/// Holds the verified caller identity of one connection. Set by the certificate check
/// during the handshake, read by request handlers; a pass-through in the pipeline.
final class ClientIdentityHandler: ChannelInboundHandler, RemovableChannelHandler, Sendable {
    typealias InboundIn = NIOAny

    private let box = NIOLockedValueBox<ClientIdentity?>(nil)

    var identity: ClientIdentity? { box.withLockedValue { $0 } }

    func set(_ identity: ClientIdentity) { box.withLockedValue { $0 = identity } }
}

/// Logs TLS handshake failures that happen before any certificate check (no client
/// certificate, TLS 1.1 or older, no shared cipher), with the peer address.
final class HandshakeFailureLogger: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    let logger: Logger

    init(logger: Logger) { self.logger = logger }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is NIOSSLError || error is BoringSSLError {
            logger.warning("TLS handshake refused", metadata: [
                "peer": "\(context.remoteAddress?.description ?? "?")", "error": "\(error)",
            ])
        }
        context.fireErrorCaught(error)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event {
            context.pipeline.syncOperations.removeHandler(self, promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// A TLS server channel whose client-certificate check is ours (``ClientCertificateVerifier``):
/// nothing reaches the HTTP layer until the caller's chain, CN/OU and revocation status have
/// passed. Wraps Hummingbird's HTTP/1.1 channel.
struct MutualTLSChannel<Base: ServerChildChannel & HTTPChannelHandler>: ServerChildChannel, HTTPChannelHandler {
    typealias Value = Base.Value

    let base: Base
    /// Looked up per connection: a SIGHUP reload applies to the next handshake.
    let sslContext: @Sendable () -> NIOSSLContext
    let verifier: ClientCertificateVerifier
    let logger: Logger

    var responder: HTTPChannelHandler.Responder { base.responder }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let verifier = self.verifier
        let identityHandler = ClientIdentityHandler()
        return channel.eventLoop.makeCompletedFuture {
            let tls = NIOSSLServerHandler(context: sslContext(), customVerificationCallbackWithMetadata: { presented, promise in
                promise.completeWithTask {
                    let certificates = presented.compactMap { try? Certificate(derEncoded: $0.toDERBytes()) }
                    guard certificates.count == presented.count else { return .failed }
                    switch await verifier.verify(presented: certificates) {
                    case .success(let (identity, chain)):
                        identityHandler.set(identity)
                        // Report the path we validated (leaf to trust anchor), not what was sent.
                        let validated = try chain.map { certificate in
                            var serializer = DER.Serializer()
                            try serializer.serialize(certificate)
                            return try NIOSSLCertificate(bytes: serializer.serializedBytes, format: .der)
                        }
                        return .certificateVerified(VerificationMetadata(ValidatedCertificateChain(validated)))
                    case .failure:
                        return .failed
                    }
                }
            })
            try channel.pipeline.syncOperations.addHandler(tls)
            try channel.pipeline.syncOperations.addHandler(HandshakeFailureLogger(logger: self.logger))
            try channel.pipeline.syncOperations.addHandler(identityHandler)
        }.flatMap {
            self.base.setup(channel: channel, logger: logger)
        }
    }

    func handle(value: Base.Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}

/// The TLS settings the SAS requires: TLS 1.2 or 1.3 only, AEAD suites with forward secrecy,
/// a client certificate always requested (its verification is ``ClientCertificateVerifier``'s).
enum MutualTLSConfiguration {
    static func make(certificateChain: [NIOSSLCertificate], privateKey: NIOSSLPrivateKey, clientCAs: [NIOSSLCertificate]) -> TLSConfiguration {
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: certificateChain.map { .certificate($0) },
            privateKey: .privateKey(privateKey)
        )
        tls.minimumTLSVersion = .tlsv12
        tls.maximumTLSVersion = .tlsv13
        tls.certificateVerification = .noHostnameVerification
        tls.trustRoots = .certificates(clientCAs)
        tls.sendCANameList = true
        tls.applicationProtocols = ["http/1.1"]
        tls.cipherSuiteValues = [
            .TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, .TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            .TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, .TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            .TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, .TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ]
        return tls
    }
}
