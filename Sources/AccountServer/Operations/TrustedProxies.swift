import Foundation
import HTTPTypes
import Hummingbird
import Synchronization

/// An IPv4 or IPv6 network (`10.0.0.0/8`, `::1/128`, or a bare address).
struct CIDR: Sendable, Equatable, CustomStringConvertible {
    let network: [UInt8]
    let prefixLength: Int
    let description: String

    init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1)
        guard let address = parts.first, let bytes = Self.bytes(String(address)) else { return nil }
        let length: Int
        if parts.count == 2 {
            guard let value = Int(parts[1]), (0...bytes.count * 8).contains(value) else { return nil }
            length = value
        } else {
            length = bytes.count * 8
        }
        network = Self.masked(bytes, length)
        prefixLength = length
        description = text
    }

    /// A repeatable flag's networks, each parsed, or the start refused naming the flag and
    /// the value that is none.
    static func list(_ texts: [String], flag: String) throws -> [CIDR] {
        try texts.map { text in
            guard let cidr = CIDR(text) else { throw ConfigurationError(description: "\(flag) \(text) is not an address or CIDR") }
            return cidr
        }
    }

    func contains(_ address: String) -> Bool {
        guard var bytes = Self.bytes(address) else { return false }
        // An IPv4-mapped IPv6 peer (::ffff:a.b.c.d) matches IPv4 networks.
        if bytes.count == 16, network.count == 4, bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xff, bytes[11] == 0xff {
            bytes = Array(bytes[12...])
        }
        guard bytes.count == network.count else { return false }
        return Self.masked(bytes, prefixLength) == network
    }

    static func bytes(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }

    private static func masked(_ bytes: [UInt8], _ length: Int) -> [UInt8] {
        bytes.enumerated().map { index, byte in
            let bits = max(0, min(8, length - index * 8))
            return bits == 8 ? byte : byte & UInt8(truncatingIfNeeded: 0xff << (8 - bits))
        }
    }
}

/// Behind the vendor's reverse proxy every request comes from the proxy's address; this
/// takes the browser's address from `X-Forwarded-For` — only when the peer is a trusted
/// proxy, and only the entry that proxy appended (the right-most one), so a browser cannot
/// choose its own address for rate limits and the audit trail.
struct ClientAddressMiddleware<Limits: ListenerLimits>: RouterMiddleware {
    typealias Context = ListenerRequestContext<Limits>
    let trustedProxies: [CIDR]
    /// A trusted proxy's entry that is no address is said at most once a minute.
    private let unreadable = OncePerInterval(.seconds(60))

    init(trustedProxies: [CIDR]) {
        self.trustedProxies = trustedProxies
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        if !trustedProxies.isEmpty, trustedProxies.contains(where: { $0.contains(context.peerAddress) }),
           let entry = Self.lastEntry(request.headers) {
            if let address = Self.address(entry) {
                context.forwardedClientAddress = address
            } else if unreadable.due() {
                // The request counts as the proxy's own: every client behind a proxy that
                // writes such entries shares one rate-limit budget and one audit address.
                context.logger.warning("a trusted proxy's X-Forwarded-For entry is not an address: the request counts as the proxy's (said once a minute)",
                                       metadata: ["entry": "\(entry)", "proxy": "\(context.peerAddress)"])
            }
        }
        return try await next(request, context)
    }

    /// The address the nearest proxy appended to `X-Forwarded-For` (the right-most entry of
    /// the last header), when it is an IP address. Believe it only from a trusted peer.
    static func appendedByProxy(_ headers: HTTPFields) -> String? {
        lastEntry(headers).flatMap(address)
    }

    static func lastEntry(_ headers: HTTPFields) -> String? {
        guard let header = headers[values: .xForwardedFor].last, let last = header.split(separator: ",", omittingEmptySubsequences: false).last else { return nil }
        return last.trimmingCharacters(in: .whitespaces)
    }

    /// The address of an entry: an IPv4 or IPv6 address, or one with the client's port as
    /// some load balancers append it (`192.0.2.7:51234`, Azure Application Gateway;
    /// `[2001:db8::7]:51234`; `[2001:db8::7]`).
    static func address(_ entry: String) -> String? {
        if CIDR.bytes(entry) != nil { return entry }
        func isPort(_ text: Substring) -> Bool { (1...5).contains(text.count) && text.allSatisfy { $0.isASCII && $0.isNumber } }
        if entry.hasPrefix("["), let end = entry.firstIndex(of: "]") {
            let inner = String(entry[entry.index(after: entry.startIndex)..<end])
            let rest = entry[entry.index(after: end)...]
            guard CIDR.bytes(inner)?.count == 16, rest.isEmpty || (rest.first == ":" && isPort(rest.dropFirst())) else { return nil }
            return inner
        }
        let parts = entry.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, CIDR.bytes(String(parts[0]))?.count == 4, isPort(parts[1]) else { return nil }
        return String(parts[0])
    }
}

/// Says whether something is due again: at most once per interval (a warning that every
/// request could trigger).
final class OncePerInterval: Sendable {
    private let interval: Duration
    private let last = Mutex<ContinuousClock.Instant?>(nil)

    init(_ interval: Duration) {
        self.interval = interval
    }

    func due(now: ContinuousClock.Instant = .now) -> Bool {
        last.withLock { last in
            if let previous = last, now - previous < interval { return false }
            last = now
            return true
        }
    }
}

extension HTTPField.Name {
    static let xForwardedFor = Self("X-Forwarded-For")!
}
