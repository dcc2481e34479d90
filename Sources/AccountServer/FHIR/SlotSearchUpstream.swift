import Accounts
import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import Storage
import ServiceLifecycle

/// Where the vendor's INT_R01 slot search runs, when this product terminates the SAS's mutual
/// TLS in front of it (`--fhir-upstream`).
struct UpstreamConfiguration: Sendable {
    /// `http(s)://host[:port][/base]`; a request for `/Slot?…` goes to `<base>/Slot?…`.
    var url: String
    /// Time allowed to open a connection.
    var connectTimeout: Duration = .seconds(5)
    /// Time allowed for the response head, and then between two body reads.
    var responseTimeout: Duration = .seconds(30)
    /// CA bundle for an `https` upstream; the system trust store otherwise.
    var caPath: String?
    /// The certificate (PEM, with its chain) and key this product presents to an `https`
    /// upstream, as nginx's `proxy_ssl_certificate`: the upstream believes the identity
    /// headers the relay sets, so it must know the relay from anyone else that can reach it.
    var clientCertificatePath: String?
    var clientKeyPath: String?

    /// The TLS settings toward an `https` upstream (the relay's and the `/metadata` client's).
    func tlsConfiguration() throws -> TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        if let caPath {
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caPath))
        }
        if let clientCertificatePath, let clientKeyPath {
            tls.certificateChain = try NIOSSLCertificate.fromPEMFile(clientCertificatePath).map { .certificate($0) }
            let pem = try PrivateFile.readSecret(path: clientKeyPath, what: "the relay's client key", allowGroupRead: true)
            tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: pem, format: .pem))
        }
        return tls
    }
}

/// The INT_R01 upstream as this product talks to it outside the relay: the CapabilityStatement
/// merged into `/metadata` (one request now and then, through AsyncHTTPClient), and the
/// header rules the relay (``UpstreamRelay``) applies to every request it forwards.
final class SlotSearchUpstream: Sendable {
    let configuration: UpstreamConfiguration
    let baseURL: String
    private let client: HTTPClient
    private let metrics: ServerMetrics

    /// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus `Host`
    /// (the upstream's own is set from the URL).
    static let hopByHop: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
        "proxy-authorization", "proxy-authenticate", "host", "content-length",
    ]

    /// The identity headers this product sets; a caller's own copies never pass.
    static let identityPrefixes = ["x-ssl-", "ssl-", "x-client-cert", "x-forwarded-tls-client-cert"]

    /// Any field naming a client certificate, whoever's convention: RFC 9440's `Client-Cert`
    /// and `Client-Cert-Chain`, IIS's `X-ARR-ClientCert`, AWS's `X-Amzn-Mtls-Clientcert`,
    /// nginx's `X-SSL-Cert`. An upstream reading one of them must only ever see ours.
    static func namesAClientCertificate(_ lowered: String) -> Bool {
        lowered.contains("client-cert") || lowered.contains("clientcert")
    }

    init(configuration: UpstreamConfiguration, metrics: ServerMetrics) throws {
        guard let components = URLComponents(string: configuration.url), let scheme = components.scheme?.lowercased(),
              ["http", "https"].contains(scheme), let host = components.host, !host.isEmpty,
              components.query == nil, components.fragment == nil else {
            throw ConfigurationError(description: "--fhir-upstream must be an http(s)://host[:port][/base] URL, got \(shownURL(configuration.url))")
        }
        self.configuration = configuration
        baseURL = configuration.url.trimmingSuffix("/")
        var clientConfiguration = HTTPClient.Configuration(tlsConfiguration: try configuration.tlsConfiguration())
        clientConfiguration.timeout = .init(connect: .init(configuration.connectTimeout), read: .init(configuration.responseTimeout))
        clientConfiguration.redirectConfiguration = .disallow
        clientConfiguration.decompression = .disabled
        clientConfiguration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 64)
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: clientConfiguration)
        self.metrics = metrics
    }

    func shutdown() async throws {
        try await client.shutdown()
    }

    /// The upstream's CapabilityStatement, for the merged `/metadata`.
    func capabilityStatement(context: FHIRRequestContext) async throws(FHIRError) -> JSONValue {
        var outbound = HTTPClientRequest(url: baseURL + "/metadata")
        outbound.headers.add(name: "Accept", value: "application/fhir+json")
        Self.addIdentity(to: &outbound.headers, caller: context.caller, clientAddress: context.clientAddress, host: nil, requestID: context.requestID)
        let bytes: ByteBuffer
        let status: UInt
        do {
            let response = try await client.execute(outbound, timeout: .init(configuration.responseTimeout))
            status = response.status.code
            bytes = try await response.body.collect(upTo: 4 << 20)
        } catch {
            throw failure(error, context: context)
        }
        guard status == 200, case .object(let object)? = try? JSONParser().parse(Array(bytes.readableBytesView)),
              object["resourceType"] == .string("CapabilityStatement") else {
            metrics.upstream(outcome: "invalid-metadata")
            context.logger.warning("INT_R01 upstream /metadata is not a CapabilityStatement", metadata: ["status": "\(status)"])
            throw FHIRError(.badGateway, code: .exception,
                            "The slot-search service behind this endpoint did not return a CapabilityStatement (HTTP \(status)); the endpoint's capabilities cannot be stated.")
        }
        metrics.upstream(outcome: "2xx")
        return .object(object)
    }

    private func failure(_ error: any Error, context: FHIRRequestContext) -> FHIRError {
        let timedOut: Bool
        switch error {
        case let clientError as HTTPClientError:
            timedOut = [.deadlineExceeded, .connectTimeout, .readTimeout, .getConnectionFromPoolTimeout].contains(clientError)
        case let channelError as ChannelError:
            timedOut = if case .connectTimeout = channelError { true } else { false }
        default:
            timedOut = false
        }
        metrics.upstream(outcome: timedOut ? "timeout" : "unreachable")
        context.logger.warning("INT_R01 upstream failed", metadata: ["upstream": "\(baseURL)", "error": "\(error)", "timeout": "\(timedOut)"])
        if timedOut {
            return FHIRError(.gatewayTimeout, code: .timeout,
                             "The slot-search service behind this endpoint did not answer in time (request \(context.requestID)).")
        }
        return FHIRError(.badGateway, code: .transient,
                         "The slot-search service behind this endpoint is unreachable (request \(context.requestID)).")
    }

    /// The field names a `Connection` header lists (RFC 9110 §7.6.1): connection options,
    /// hop-by-hop by declaration, so a proxy removes them whatever they are called.
    static func connectionOptions(_ values: [String]) -> Set<String> {
        var options = Set<String>()
        for value in values {
            for option in value.utf8.split(separator: UInt8(ascii: ",")) {
                let trimmed = option.drop { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }
                    .reversed().drop { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }.reversed()
                guard !trimmed.isEmpty else { continue }
                let lowered = String(decoding: trimmed.map { $0 >= 65 && $0 <= 90 ? $0 | 0x20 : $0 }, as: UTF8.self)
                // Connection's own tokens name no field: nothing more to remove.
                if lowered == "keep-alive" || lowered == "close" { continue }
                options.insert(lowered)
            }
        }
        return options
    }

    /// Request headers the upstream never receives from the caller: hop-by-hop ones, the
    /// identity and forwarding headers this product sets itself, and any name with an
    /// underscore (as nginx drops them by default): CGI and PHP turn `X_SSL_Client_S_DN` and
    /// `X-SSL-Client-S-DN` into the same variable, so the underscore spelling would pass
    /// for the identity we set. `lowered`: the name in lower case (`HTTPField.Name.canonicalName`).
    static func isStripped(canonical lowered: String) -> Bool {
        lowered.utf8.contains(UInt8(ascii: "_")) || hopByHop.contains(lowered) || identityPrefixes.contains { lowered.hasPrefix($0) }
            || namesAClientCertificate(lowered) || lowered.hasPrefix("x-forwarded-") || overriding.contains(lowered)
    }

    /// Fields some frameworks believe over the request itself: who the client is
    /// (`X-Real-IP`, Envoy's `X-Forwarded-Client-Cert` falls under `x-forwarded-`), which path
    /// or method was asked (`X-Original-URL` reroutes a request past the dot-segment check on
    /// IIS and Symfony): a caller's copies never reach the upstream.
    static let overriding: Set<String> = [
        "forwarded", "x-request-id", "x-real-ip", "x-original-url", "x-rewrite-url", "x-original-uri",
        "x-http-method-override", "x-http-method", "x-method-override", "x-client-verify", "x-client-dn", "x-client-ip",
    ]

    /// Whether a `Host` value is a `host[:port]` (RFC 9110 §7.2: a reg-name, an IPv4 address
    /// or a bracketed IPv6 one): anything else is not repeated to the upstream as
    /// `X-Forwarded-Host`, where a backend building links from it would take it for ours.
    static func isHostField(_ value: String) -> Bool {
        !value.isEmpty && value.utf8.count <= 255 && value.utf8.allSatisfy { byte in
            (byte >= 0x61 && byte <= 0x7A) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x30 && byte <= 0x39)
                || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "-") || byte == UInt8(ascii: ":")
                || byte == UInt8(ascii: "[") || byte == UInt8(ascii: "]")
        }
    }

    /// A subject as nginx's `$ssl_client_s_dn` shows it (OpenSSL's RFC 2253 flags): bytes of
    /// UTF-8 beyond ASCII and control bytes written `\XX`, so `O=Numérique` becomes
    /// `O=Num\C3\A9rique` and the header stays printable ASCII.
    static func rfc2253Escaped(_ subject: String) -> String {
        func escapes(_ byte: UInt8) -> Bool { byte >= 0x7F || byte < 0x20 }
        guard subject.utf8.contains(where: escapes) else { return subject }
        var escaped = ""
        for byte in subject.utf8 {
            if escapes(byte) {
                escaped += "\\" + (byte < 0x10 ? "0" : "") + String(byte, radix: 16, uppercase: true)
            } else {
                escaped.unicodeScalars.append(Unicode.Scalar(byte))
            }
        }
        return escaped
    }

    /// The verified caller, as nginx's `ssl_client_*` variables would describe it. Added, not
    /// replaced: the caller's own copies were stripped before (``isStripped(canonical:)``).
    static func addIdentity(to headers: inout HTTPHeaders, caller: ClientIdentity?, clientAddress: String, host: String?, requestID: String) {
        headers.add(name: "X-Forwarded-For", value: clientAddress)
        headers.add(name: "X-Forwarded-Proto", value: "https")
        if let host, isHostField(host) { headers.add(name: "X-Forwarded-Host", value: host) }
        headers.add(name: "X-Request-Id", value: requestID)
        guard let caller else { return }
        headers.add(name: "X-SSL-Client-Verify", value: "SUCCESS")
        headers.add(name: "X-SSL-Client-S-DN", value: rfc2253Escaped(caller.subject))
        headers.add(name: "X-SSL-Client-Serial", value: caller.serial)
        if let pem = caller.escapedPEM {
            headers.add(name: "X-SSL-Client-Cert", value: pem)
        }
    }
}

/// The FHIR listener's one routing table: for each request, whether it is an INT_R02
/// interaction (answered by the router) or INT_R01 traffic (relayed to the upstream by
/// ``UpstreamRelayHandler``, which asks this before anything else). INT_R02 is: every write
/// on `Practitioner` (create, conditional update, and the refusals of other writes),
/// `GET /metadata` (which merges the upstream's statement), and reads of a
/// `Practitioner/{id}` this product holds — the `Location` it returned must resolve.
/// Practitioner *searches* belong to the slot search (the SAS finds the vendor's
/// practitioners there) and are relayed.
enum FHIRRouting {
    enum Route: Equatable {
        case local
        case upstream
        /// Local when an account has this id, upstream otherwise.
        case practitionerRead(id: String)
    }

    static func route(method: HTTPRequest.Method, path: String) -> Route {
        let segments = path.split(separator: "/", omittingEmptySubsequences: true)
        let isRead = method == .get || method == .head
        switch segments.first {
        case "metadata"? where segments.count == 1:
            return .local
        case "Practitioner"?:
            if segments.count >= 2, segments[1] == "_search" { return .upstream }
            if !isRead { return .local }
            if segments.count == 1 { return .upstream }
            return .practitionerRead(id: String(segments[1]))
        case let first? where first.lowercased() == "practitioner" || first.lowercased() == "metadata"
            || first.utf8.contains { $0 == UInt8(ascii: "%") || $0 >= 0x80 }:
            // `/practitioner`, `/METADATA`: FHIR's names are case-sensitive, so these are no
            // resource of this server's, and answered here (404), not relayed: an upstream
            // that ignores case would take them for the INT_R02 writes this product owns. So
            // is a first segment with an encoded or non-ASCII character, which no FHIR name
            // has: `/pract%C4%B1tioner` (a dotless ı) is `Practitioner` to Java's
            // `equalsIgnoreCase`.
            return .local
        default:
            return .upstream
        }
    }

    /// A path with a dot-segment (`/Slot/../admin`), an encoded slash or a backslash, a `;`
    /// (Tomcat and Jetty read `..;` as `..`), a `%25` (decoded twice by some backends), a `#`
    /// (a client library drops the fragment, leaving a bare `..`), a percent-encoded
    /// unreserved character (`/%50ractitioner` is `/Practitioner` to the upstream, RFC 3986
    /// §6.2.2.2, while the routing saw another resource; `%2e` is a dot) or a leading `//`
    /// (`//evil.example/Slot` is a network-path reference to URL parsers such as Node's) is
    /// refused: relayed, the upstream (or a proxy after it) would resolve it to a resource the
    /// routing never saw. No FHIR path has any of them. Byte by byte: it runs for every
    /// relayed request.
    static func hasAmbiguousSegments(_ path: String) -> Bool {
        let bytes = Array(path.utf8)
        if bytes.count >= 2, bytes[0] == UInt8(ascii: "/"), bytes[1] == UInt8(ascii: "/") { return true }
        func hex(_ byte: UInt8) -> UInt8? {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
            default: nil
            }
        }
        var index = 0
        while index < bytes.count {
            switch bytes[index] {
            case UInt8(ascii: "\\"), UInt8(ascii: ";"), UInt8(ascii: "#"):
                return true
            case UInt8(ascii: "%") where index + 2 < bytes.count:
                guard let high = hex(bytes[index + 1]), let low = hex(bytes[index + 2]) else { break }
                switch high << 4 | low {
                case UInt8(ascii: "/"), UInt8(ascii: "\\"), UInt8(ascii: "%"), UInt8(ascii: ";"), UInt8(ascii: "#"):
                    return true
                case let decoded where isUnreserved(decoded):
                    return true
                default:
                    break
                }
            default:
                break
            }
            index += 1
        }
        return bytes.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).contains { segment in
            segment.elementsEqual([UInt8(ascii: ".")]) || segment.elementsEqual([UInt8(ascii: "."), UInt8(ascii: ".")])
        }
    }

    /// RFC 3986 §2.3: ALPHA, DIGIT, `-`, `.`, `_`, `~`; their percent-encodings mean the
    /// same as the characters themselves.
    static func isUnreserved(_ byte: UInt8) -> Bool {
        (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A) || (byte >= 0x30 && byte <= 0x39)
            || byte == UInt8(ascii: "-") || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "~")
    }
}

/// Shuts the upstream clients down after the listeners have drained.
struct UpstreamClientService: Service {
    let upstream: SlotSearchUpstream
    let relay: UpstreamRelay?

    func run() async throws {
        try? await gracefulShutdown()
        await relay?.shutdown()
        try await upstream.shutdown()
    }
}
