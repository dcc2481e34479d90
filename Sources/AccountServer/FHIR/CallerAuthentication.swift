import Accounts
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import SwiftASN1
import X509

/// How the FHIR listener learns who is calling: in both topologies the same
/// ``ClientCertificateVerifier`` decides (CA chain, validity, CN/OU, client-auth usage, CRL).
enum CallerAuthenticationMode: Sendable {
    /// This product terminates mutual TLS; the handshake already verified the caller.
    case mutualTLS
    /// A TLS-terminating proxy (nginx, HAProxy) verified the caller and forwards its
    /// certificate in `header`; only peers in `trustedProxies` are believed, and the
    /// certificate is verified again here. With `proxy`, the proxy itself must also have
    /// authenticated with its own client certificate (proxy mTLS): an address alone can be
    /// borrowed by any local process or a server-side request forgery.
    case forwardedCertificate(header: HTTPField.Name, trustedProxies: [CIDR], proxy: ClientCertificateVerifier?)
}

/// Decides who is calling, for the FHIR router's middleware and for the slot-search relay
/// alike (one set of rules for both): the caller's identity, or a 403 OperationOutcome.
struct CallerAuthenticator: Sendable {
    let mode: CallerAuthenticationMode
    let verifier: ClientCertificateVerifier

    /// A verified caller, and the browser-side address a trusted proxy reported.
    struct Caller: Sendable {
        var identity: ClientIdentity
        var forwardedClientAddress: String?
    }

    /// Mutual TLS once the handshake is settled: decided without suspending, so the relay
    /// can decide on its event loop.
    func decide(handshake identity: ClientIdentity?) -> Result<Caller, FHIRError> {
        var revalidation: ClientCertificateVerifier.Revalidation?
        return decide(handshake: identity, revalidation: &revalidation)
    }

    /// ``decide(handshake:)`` for one more request of a connection, with the connection's
    /// last revalidation (which stands while the CRLs in force have not changed).
    func decide(handshake identity: ClientIdentity?, revalidation: inout ClientCertificateVerifier.Revalidation?) -> Result<Caller, FHIRError> {
        guard let identity else {
            // Unreachable while the handshake requires a verified certificate; fail closed anyway.
            return .failure(FHIRError(.forbidden, code: .security, "No verified client certificate on this connection."))
        }
        // A kept-alive connection outlives CRL updates: re-check what can change.
        switch verifier.revalidate(identity, previous: revalidation) {
        case .success(let passed):
            revalidation = passed
            return .success(Caller(identity: identity, forwardedClientAddress: nil))
        case .failure:
            revalidation = nil
            return .failure(FHIRError(.forbidden, code: .security, "The client certificate is not accepted."))
        }
    }

    /// A refusal of ``authenticate(headers:peer:handshakeIdentity:logger:)``: its answer, and
    /// whether it is about the connection itself (its own certificate, or its peer), so that
    /// every later request on it would be refused too. Such a connection ends with the answer
    /// (`Connection: close`), and a client holding a renewed certificate makes a new handshake
    /// instead of being refused for as long as it keeps the connection alive.
    struct Refusal: Error {
        var outcome: FHIRError
        var endsConnection: Bool
    }

    func authenticate(headers: HTTPFields, peer: String, handshakeIdentity: () async -> ClientIdentity?,
                      logger: Logger) async throws(Refusal) -> Caller {
        switch mode {
        case .mutualTLS:
            switch decide(handshake: await handshakeIdentity()) {
            case .success(let caller): return caller
            case .failure(let outcome): throw Refusal(outcome: outcome, endsConnection: true)
            }
        case .forwardedCertificate(let header, let trustedProxies, let proxyVerifier):
            guard trustedProxies.contains(where: { $0.contains(peer) }) else {
                logger.warning("FHIR request refused: not from a trusted proxy", metadata: ["peer": "\(peer)"])
                throw Refusal(outcome: FHIRError(.forbidden, code: .security,
                                                 "This endpoint only answers requests relayed by the trusted TLS-terminating proxy."),
                              endsConnection: true)
            }
            if let proxyVerifier {
                guard let proxy = await handshakeIdentity(), proxyVerifier.revalidate(proxy) == nil else {
                    logger.warning("FHIR request refused: the proxy's own certificate is missing or no longer valid", metadata: ["peer": "\(peer)"])
                    throw Refusal(outcome: FHIRError(.forbidden, code: .security,
                                                     "This endpoint only answers requests relayed by the trusted TLS-terminating proxy."),
                                  endsConnection: true)
                }
            }
            let values = headers[values: header]
            guard values.count == 1, let value = values.first, !value.isEmpty else {
                logger.warning("FHIR request refused: no forwarded client certificate", metadata: [
                    "peer": "\(peer)", "header": "\(header)", "count": "\(values.count)",
                ])
                throw Refusal(outcome: FHIRError(.forbidden, code: .security,
                                                 values.isEmpty ? "No client certificate: mutual TLS is required." : "More than one forwarded client certificate."),
                              endsConnection: false)
            }
            let chain: [Certificate]
            do {
                chain = try ForwardedCertificate.parse(value)
            } catch {
                logger.warning("FHIR request refused: unreadable forwarded client certificate", metadata: ["peer": "\(peer)"])
                throw Refusal(outcome: FHIRError(.forbidden, code: .security, "The forwarded client certificate could not be read."), endsConnection: false)
            }
            switch await verifier.verify(presented: chain) {
            case .success(let identity):
                return Caller(identity: identity, forwardedClientAddress: ClientAddressMiddleware<FHIRLimits>.appendedByProxy(headers))
            case .failure:
                // The verifier logged subject, serial and reason; the caller learns nothing more.
                // The proxy's connection carries other callers' requests: it stays.
                throw Refusal(outcome: FHIRError(.forbidden, code: .security, "The client certificate is not accepted."), endsConnection: false)
            }
        }
    }
}

/// Establishes the verified caller of every FHIR request the router sees before anything
/// else runs (INT_R02 handlers, even 404s): no caller, no answer but a 403 OperationOutcome,
/// and nothing of the request is processed. (Relayed requests never reach the router: the
/// relay asks the same ``CallerAuthenticator`` first.)
struct CallerAuthenticationMiddleware: RouterMiddleware {
    typealias Context = FHIRRequestContext
    let authenticator: CallerAuthenticator

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        let caller: CallerAuthenticator.Caller
        do {
            caller = try await authenticator.authenticate(headers: request.headers, peer: context.peerAddress,
                                                          handshakeIdentity: { await context.handshakeIdentity() }, logger: context.logger)
        } catch {
            guard error.endsConnection else { throw error.outcome }
            // ``ClosingAnswerHandler`` ends the connection once this answer is written; what
            // Hummingbird had already received behind this request finds no caller.
            await context.forgetHandshakeIdentity()
            let (type, pretty) = FHIRErrorMiddleware.errorFormat(request, error.outcome)
            var response = FHIRResponses.outcome(error.outcome, contentType: type, pretty: pretty)
            response.headers[.connection] = "close"
            return response
        }
        context.caller = caller.identity
        if let forwarded = caller.forwardedClientAddress { context.forwardedClientAddress = forwarded }
        return try await next(request, context)
    }
}

/// Reads the client certificate a TLS-terminating proxy forwards in a header, in the forms the
/// usual proxies produce:
/// - nginx `$ssl_client_escaped_cert`: URL-encoded PEM (leaf only);
/// - nginx `$ssl_client_cert` or any raw PEM, possibly several blocks (leaf first);
/// - HAProxy `%[ssl_c_der,base64]`: base64 DER;
/// - Traefik `X-Forwarded-Tls-Client-Cert`: URL-encoded base64 DER, comma-separated chain.
enum ForwardedCertificate {
    struct Unreadable: Error {}

    static func parse(_ value: String) throws(Unreadable) -> [Certificate] {
        let decoded = value.contains("%") ? (value.removingPercentEncoding ?? value) : value
        var certificates: [Certificate] = []
        if decoded.contains("-----BEGIN CERTIFICATE-----") {
            var rest = Substring(decoded)
            while let begin = rest.range(of: "-----BEGIN CERTIFICATE-----") {
                guard let end = rest.range(of: "-----END CERTIFICATE-----", range: begin.upperBound..<rest.endIndex) else { throw Unreadable() }
                let base64 = rest[begin.upperBound..<end.lowerBound].filter { !$0.isWhitespace }
                guard let der = Data(base64Encoded: String(base64)), let certificate = try? Certificate(derEncoded: Array(der)) else { throw Unreadable() }
                certificates.append(certificate)
                rest = rest[end.upperBound...]
            }
        } else {
            for part in decoded.split(separator: ",") {
                let base64 = part.filter { !$0.isWhitespace }
                guard let der = Data(base64Encoded: String(base64)), let certificate = try? Certificate(derEncoded: Array(der)) else { throw Unreadable() }
                certificates.append(certificate)
            }
        }
        guard !certificates.isEmpty, certificates.count <= 8 else { throw Unreadable() }
        return certificates
    }

    /// The leaf as nginx's `$ssl_client_escaped_cert` would send it, so an INT_R01 backend
    /// written for nginx reads it unchanged. Computed once per verified caller (it is relayed
    /// with every request of the connection).
    static func escapedPEM(_ certificate: Certificate) -> String? {
        var serializer = DER.Serializer()
        guard (try? serializer.serialize(certificate)) != nil else { return nil }
        let base64 = Data(serializer.serializedBytes).base64EncodedString(options: [.lineLength64Characters, .endLineWithLineFeed])
        return PercentEncoding.encode("-----BEGIN CERTIFICATE-----\n\(base64)\n-----END CERTIFICATE-----\n")
    }
}
