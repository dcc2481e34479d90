import Foundation
import HTTPTypes
import Hummingbird

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

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        if !trustedProxies.isEmpty, trustedProxies.contains(where: { $0.contains(context.peerAddress) }),
           let address = Self.appendedByProxy(request.headers) {
            context.forwardedClientAddress = address
        }
        return try await next(request, context)
    }

    /// The address the nearest proxy appended to `X-Forwarded-For` (the right-most entry of
    /// the last header), when it is an IP address. Believe it only from a trusted peer.
    static func appendedByProxy(_ headers: HTTPFields) -> String? {
        guard let header = headers[values: .xForwardedFor].last,
              let last = header.split(separator: ",").last?.trimmingCharacters(in: .whitespaces), CIDR.bytes(last) != nil else { return nil }
        return last
    }
}

extension HTTPField.Name {
    static let xForwardedFor = Self("X-Forwarded-For")!
}
