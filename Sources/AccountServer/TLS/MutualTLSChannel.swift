import HummingbirdCore
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import NIOTLS
import SwiftASN1
import X509

/// Holds the verified caller identity of one connection; a pass-through in the pipeline.
///
/// A full handshake runs our verification callback, which sets the identity. A *resumed*
/// handshake (TLS 1.2 session id or ticket, TLS 1.3 PSK: what Java's and curl's clients do
/// by default) runs no callback at all, so on `handshakeCompleted` without an identity the
/// leaf is read back from the resumed session and verified again exactly like a full
/// handshake (chain, dates, CN/OU, EKU and the CRLs in force *now*): a certificate revoked
/// since the first handshake never passes on a resumed one. Request handlers wait for the
/// outcome (``identity()``); a refused resumption closes the connection.
final class ClientIdentityHandler: ChannelInboundHandler, RemovableChannelHandler, Sendable {
    typealias InboundIn = NIOAny

    private struct State {
        var identity: ClientIdentity?
        /// The chain to remember for resumptions, committed once the handshake completes (the
        /// verification callback runs before the client has proven it holds the key).
        var pendingChain: (leaf: [UInt8], intermediates: [Certificate])?
        var settled = false
        var waiters: [CheckedContinuation<ClientIdentity?, Never>] = []
    }
    private let state = NIOLockedValueBox(State())
    private let verifier: ClientCertificateVerifier
    private let chains: PresentedChainCache
    private let logger: Logger

    init(verifier: ClientCertificateVerifier, chains: PresentedChainCache, logger: Logger) {
        self.verifier = verifier
        self.chains = chains
        self.logger = logger
    }

    /// Called by the verification callback of a full handshake.
    func set(_ identity: ClientIdentity, leaf: [UInt8]? = nil, intermediates: [Certificate] = []) {
        state.withLockedValue {
            $0.identity = identity
            if let leaf { $0.pendingChain = (leaf, intermediates) }
        }
    }

    /// The connection is refused for good (its certificate no longer passes): from now on it
    /// has no verified caller, so a request already received behind the refusal is refused
    /// at once, without being decided (or logged) again, while the connection closes.
    func forget() {
        state.withLockedValue { $0.identity = nil }
    }

    /// The connection's verified caller, once the handshake (and, for a resumed session, its
    /// re-verification) is over; nil if there is none.
    func identity() async -> ClientIdentity? {
        await withCheckedContinuation { continuation in
            let ready: ClientIdentity?? = state.withLockedValue { state in
                if state.settled { return .some(state.identity) }
                state.waiters.append(continuation)
                return .none
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    /// The outcome without waiting, once settled: `.some(nil)` when settled without a caller,
    /// nil while the handshake (or a resumed session's re-verification) is still running.
    var settledIdentity: ClientIdentity?? {
        state.withLockedValue { $0.settled ? .some($0.identity) : nil }
    }

    private func settle(_ identity: ClientIdentity?) {
        let waiters = state.withLockedValue { state -> [CheckedContinuation<ClientIdentity?, Never>] in
            guard !state.settled else { return [] }
            state.settled = true
            state.identity = identity
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume(returning: identity) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event {
            let (identity, pending) = state.withLockedValue { ($0.identity, $0.pendingChain) }
            if let identity {
                if let pending { chains.record(leaf: pending.leaf, intermediates: pending.intermediates) }
                settle(identity)
            } else {
                reverifyResumedSession(context: context)
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        settle(nil)
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        settle(nil)
    }

    private func reverifyResumedSession(context: ChannelHandlerContext) {
        let tls = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self)
        guard let der = try? tls?.peerCertificate?.toDERBytes(), let leaf = try? Certificate(derEncoded: der) else {
            logger.warning("resumed TLS session without a client certificate; closing", metadata: ["peer": "\(context.remoteAddress?.description ?? "?")"])
            settle(nil)
            context.close(promise: nil)
            return
        }
        let channel = context.channel
        let (verifier, chains, logger) = (self.verifier, self.chains, self.logger)
        Task {
            let result = await verifier.verify(presented: [leaf] + chains.intermediates(for: der))
            switch result {
            case .success(let identity):
                self.settle(identity)
            case .failure:
                logger.notice("resumed TLS session refused on re-verification; closing", metadata: ["peer": "\(channel.remoteAddress?.description ?? "?")"])
                self.settle(nil)
                channel.close(promise: nil)
            }
        }
    }
}

/// The intermediates each client presented at its last full handshake, by leaf. A resumed
/// session keeps only the leaf, so a client whose chain goes through an intermediate that
/// is not in the CA bundle is re-verified with the intermediates it sent then. Bounded:
/// when full it starts over (a resumption it cannot complete is simply refused, and the
/// client's next full handshake fills it again).
final class PresentedChainCache: Sendable {
    private let entries = NIOLockedValueBox<[[UInt8]: [Certificate]]>([:])
    private let capacity: Int

    init(capacity: Int = 1024) { self.capacity = capacity }

    func record(leaf: [UInt8], intermediates: [Certificate]) {
        guard !intermediates.isEmpty else { return }
        entries.withLockedValue { entries in
            if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
            entries[leaf] = intermediates
        }
    }

    func intermediates(for leaf: [UInt8]) -> [Certificate] {
        entries.withLockedValue { $0[leaf] ?? [] }
    }
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
        // Pass the event on first: once removed, this context no longer forwards anything
        // (and ClientIdentityHandler, further on, waits for this very event).
        context.fireUserInboundEventTriggered(event)
        if case TLSUserEvent.handshakeCompleted = event {
            context.pipeline.syncOperations.removeHandler(self, promise: nil)
        }
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
    let chains: PresentedChainCache
    let logger: Logger

    var responder: HTTPChannelHandler.Responder { base.responder }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let verifier = self.verifier
        let chains = self.chains
        let identityHandler = ClientIdentityHandler(verifier: verifier, chains: chains, logger: self.logger)
        return channel.eventLoop.makeCompletedFuture {
            let tls = NIOSSLServerHandler(context: sslContext(), customVerificationCallbackWithMetadata: { presented, promise in
                promise.completeWithTask {
                    let certificates = presented.compactMap { try? Certificate(derEncoded: $0.toDERBytes()) }
                    guard certificates.count == presented.count else { return .failed }
                    switch await verifier.verify(presented: certificates) {
                    case .success(let identity):
                        identityHandler.set(identity, leaf: try? presented.first?.toDERBytes(), intermediates: Array(certificates.dropFirst()))
                        // Report the path we validated (leaf to trust anchor), not what was sent.
                        let validated = try identity.chain.map { certificate in
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
        tls.cipherSuiteValues = tls12Suites
        return tls
    }

    /// The TLS 1.2 suites of every listener (docs/configuration.md, "TLS policy"): forward
    /// secrecy and AEAD only, no RSA key exchange nor CBC. TLS 1.3's suites all qualify.
    static let tls12Suites: [NIOTLSCipher] = [
        .TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, .TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        .TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, .TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        .TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, .TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
}
