import Accounts
import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Synchronization

/// Names and attributes of the cookies of the web surface. `__Host-` cookies are bound to
/// this exact host, `Secure`, `Path=/`; all are `HttpOnly` and `SameSite=Lax`.
enum WebCookie: String, CaseIterable {
    case session = "__Host-as-session"
    case intent = "__Host-as-intent"
    case flow = "__Host-as-flow"
    case csrf = "__Host-as-csrf"
    /// "mot-de-passe" once the regulator chose « Se connecter sans Pro Santé Connect » (30
    /// days), or for an hour after a refused provider answer: SAS entries from this browser
    /// then show the password sign-in instead of the provider.
    case method = "__Host-as-methode"

    func set(_ value: String, maxAge: Int? = nil) -> String {
        var cookie = "\(rawValue)=\(value); Path=/; Secure; HttpOnly; SameSite=Lax"
        if let maxAge { cookie += "; Max-Age=\(maxAge)" }
        return cookie
    }

    var clear: String { "\(rawValue)=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0" }

    /// The cookie's value in a request's `Cookie` headers (the first one of that name).
    static func value(_ cookie: WebCookie, in fields: HTTPFields) -> String? {
        value(named: cookie.rawValue, in: fields)
    }

    static func value(named name: String, in fields: HTTPFields) -> String? {
        for header in fields[values: .cookie] {
            if let found = value(named: name, inHeader: header) { return found.isEmpty ? nil : found }
        }
        return nil
    }

    static func value(_ cookie: WebCookie, inHeader header: String) -> String? {
        value(named: cookie.rawValue, inHeader: header)
    }

    /// The cookie's value in one `Cookie` header ("" when present but empty). Parsed on
    /// UTF-8 bytes: this runs on every forward-auth request.
    static func value(named cookieName: String, inHeader header: String) -> String? {
        values(named: cookieName, inHeader: header, upTo: 1).first
    }

    /// The cookie's value when the request carries it exactly once, across all its `Cookie`
    /// headers; nil when absent, empty or repeated. Forward-auth reads the session this way:
    /// a browser never sends two `__Host-` cookies of one name for one origin, so a second
    /// copy was added by hand, and the proxy's cookie filter (which removes the first copy
    /// before the agenda) would let it through; with two, no session is read and nothing
    /// reaches the agenda.
    static func soleValue(named cookieName: String, inHeaders headers: some Sequence<String>) -> String? {
        var found: String?
        for header in headers {
            for value in values(named: cookieName, inHeader: header, upTo: 2) {
                if found != nil { return nil }
                found = value
            }
        }
        guard let found, !found.isEmpty else { return nil }
        return found
    }

    /// The first `limit` values of the cookie in one `Cookie` header.
    private static func values(named cookieName: String, inHeader header: String, upTo limit: Int) -> [String] {
        let name = Array(cookieName.utf8)
        let bytes = Array(header.utf8)
        var found: [String] = []
        var index = 0
        while index < bytes.count, found.count < limit {
            while index < bytes.count, bytes[index] == 0x20 || bytes[index] == 0x09 { index += 1 }
            let start = index
            while index < bytes.count, bytes[index] != 0x3B { index += 1 }
            var end = index
            while end > start, bytes[end - 1] == 0x20 || bytes[end - 1] == 0x09 { end -= 1 }
            index += 1
            guard end - start > name.count, bytes[start + name.count] == 0x3D,
                  bytes[start..<(start + name.count)].elementsEqual(name) else { continue }
            found.append(String(decoding: bytes[(start + name.count + 1)..<end], as: UTF8.self))
        }
        return found
    }
}

/// CSRF protection of every form, regulator pages and admin page alike: the form carries
/// HMAC(server key, a secret of the browser's: its csrf cookie before sign-in, its session
/// after), so a cross-site page can neither read nor forge it, and a token is worth nothing
/// with another browser's cookies; a POST whose `Origin` is another site, or that the
/// browser marks cross-site, is refused outright.
struct CSRFProtection: Sendable {
    private let key: SymmetricKey
    let publicOrigin: String

    init(key: [UInt8], publicOrigin: String, purpose: String = "csrf") {
        self.key = SymmetricKey(data: SHA256.hash(data: key + Array(purpose.utf8)))
        self.publicOrigin = publicOrigin
    }

    /// A MAC of `message` for another use than forms, under a key of its own derived for
    /// `purpose`: no form token is ever a valid MAC of it, nor the reverse, whatever a client
    /// puts in its CSRF cookie.
    func mac(_ message: String, purpose: String) -> String {
        let derived = key.withUnsafeBytes { SymmetricKey(data: SHA256.hash(data: Array($0) + Array("mac:\(purpose)".utf8))) }
        return Base64URL.encode(Array(HMAC<SHA256>.authenticationCode(for: Array(message.utf8), using: derived)))
    }

    /// Checks a form bound to `secret` (a cookie value) and posted from `origin`.
    func isValid(fields: HTTPFields, submitted: String?, boundTo secret: String?, origin expected: String) -> Bool {
        if let origin = fields[.origin], origin != "null", origin != expected { return false }
        if let site = fields[HTTPField.Name("Sec-Fetch-Site")!], site == "cross-site" || site == "same-site" { return false }
        guard let secret, let submitted else { return false }
        return SecretToken.constantTimeEquals(Array(token(for: secret).utf8), Array(submitted.utf8))
    }

    func token(for cookie: String) -> String {
        Base64URL.encode(Array(HMAC<SHA256>.authenticationCode(for: Array(cookie.utf8), using: key)))
    }

    func isValid(fields: HTTPFields, submitted: String?) -> Bool {
        isValid(fields: fields, submitted: submitted, boundTo: Self.browserSecret(fields), origin: publicOrigin)
    }

    /// The secret a regulator's form is bound to: the session once signed in, so that a token
    /// seen before sign-in (in a page, a log, a shared screen) is worth nothing after it, as
    /// Keycloak and Kratos rotate theirs at login; the csrf cookie before (and after sign-out).
    static func browserSecret(_ fields: HTTPFields) -> String? {
        WebCookie.value(.session, in: fields) ?? WebCookie.value(.csrf, in: fields)
    }
}

/// Where a time-keeping part (rate limiters, admin page sessions) reads the time: the
/// monotonic clock when serving; tests move a manual one, so budgets, refills and timeouts
/// are checked exactly rather than raced against a test's own speed on a loaded machine.
struct MonotonicClock: Sendable {
    var now: @Sendable () -> ContinuousClock.Instant
    static let continuous = MonotonicClock { ContinuousClock.now }
}

/// A per-client token bucket for the endpoints that verify secrets (sign-in, second factor,
/// reset requests and resets): `burst` requests at once, refilled at `perMinute`.
final class RateLimiter: Sendable {
    private struct Bucket { var tokens: Double; var updated: ContinuousClock.Instant }
    private struct State {
        var buckets: [String: Bucket] = [:]
        var lastSweep: ContinuousClock.Instant?
        var sweeps = 0
    }
    private let state = Mutex(State())
    let perMinute: Double
    let burst: Double
    /// Buckets kept at most. Past it, after a sweep, a client without a bucket is refused
    /// (429) rather than given one: memory stays bounded, and evicting used buckets instead
    /// would hand a flooding client fresh ones.
    let maximumKeys: Int
    /// An IPv6 /48 (a site; free from tunnel brokers, with 65,536 /64s in it) shares one
    /// bucket `networkFactor` times the size of a client's, so a client cannot multiply its
    /// budget by its /64s.
    let networkFactor: Double
    private let clock: MonotonicClock
    static let sweepInterval: Duration = .seconds(5)

    convenience init(perMinute: Int, burst: Int, maximumKeys: Int = 100_000, networkFactor: Int = 16, clock: MonotonicClock = .continuous) {
        self.init(refillPerMinute: Double(perMinute), burst: burst, maximumKeys: maximumKeys, networkFactor: networkFactor, clock: clock)
    }

    /// A refill below one a minute (`1.0 / 60`: one an hour).
    init(refillPerMinute: Double, burst: Int, maximumKeys: Int = 100_000, networkFactor: Int = 16, clock: MonotonicClock = .continuous) {
        self.perMinute = refillPerMinute
        self.burst = Double(burst)
        self.maximumKeys = maximumKeys
        self.networkFactor = Double(networkFactor)
        self.clock = clock
    }

    /// One bucket per scope and client; IPv6 clients are counted per /64, the smallest
    /// network a single subscriber is usually given (one host can use every address in it),
    /// and per /48 as well (a larger bucket for the whole site).
    func allow(_ scope: String, client address: String) -> Bool {
        let keys = Self.keys(address)
        if let network = keys.network {
            return allow([(scope + "|" + network, networkFactor), (scope + "|" + keys.client, 1)])
        }
        return allow([(scope + "|" + keys.client, 1)])
    }

    static func clientKey(_ address: String) -> String { keys(address).client }

    static func keys(_ address: String) -> (client: String, network: String?) {
        guard address.contains(":") else { return (address, nil) }
        var bytes = in6_addr()
        guard inet_pton(AF_INET6, address, &bytes) == 1 else { return (address, nil) }
        let octets = withUnsafeBytes(of: bytes) { Array($0) }
        // An IPv4 client seen through a dual-stack socket (::ffff:a.b.c.d) keeps its address.
        if octets[0..<10].allSatisfy({ $0 == 0 }) && octets[10] == 0xFF && octets[11] == 0xFF {
            return (octets[12...].map(String.init).joined(separator: "."), nil)
        }
        let hex = octets[0..<8].map { String(format: "%02x", $0) }.joined()
        return (hex + "::/64", String(hex.prefix(12)) + "::/48")
    }

    func allow(_ key: String) -> Bool { allow([(key, 1)]) }

    /// Takes a token from every bucket named, or from none. A bucket is stored only when a
    /// token is taken from it: an absent bucket is a full one, so a refused request (its /48
    /// empty, say) stores nothing, and a flood of refused requests from new addresses cannot
    /// fill the table. Callers name the widest bucket first.
    private func allow(_ keys: [(key: String, factor: Double)]) -> Bool {
        let now = clock.now()
        return state.withLock { state in
            sweepIfDue(&state, now: now)
            var spent: [(String, Bucket)] = []
            for (key, factor) in keys {
                let capacity = burst * factor
                var bucket: Bucket
                if let known = state.buckets[key] {
                    bucket = known
                    let elapsed = now - bucket.updated
                    let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
                    bucket.tokens = min(capacity, bucket.tokens + seconds * perMinute * factor / 60)
                } else {
                    bucket = Bucket(tokens: capacity, updated: now)
                }
                guard bucket.tokens >= 1 else { return false }  // nothing stored, nothing spent
                bucket.tokens -= 1
                bucket.updated = now
                spent.append((key, bucket))
            }
            let new = spent.filter { state.buckets[$0.0] == nil }.count
            guard state.buckets.count + new <= maximumKeys else { return false }  // full table, new client
            for (key, bucket) in spent { state.buckets[key] = bucket }
            return true
        }
    }

    /// At most every ``sweepInterval``: drops the buckets that have refilled (a full bucket is
    /// the same as none), so the table holds only clients seen within about a minute.
    private func sweepIfDue(_ state: inout State, now: ContinuousClock.Instant) {
        if let last = state.lastSweep, now - last < Self.sweepInterval { return }
        state.lastSweep = now
        state.sweeps += 1
        let refill = Duration.seconds(burst * 60 / perMinute)
        state.buckets = state.buckets.filter { now - $0.value.updated < refill }
    }

    /// For tests: buckets held and sweeps done.
    var counts: (buckets: Int, sweeps: Int) { state.withLock { ($0.buckets.count, $0.sweeps) } }
}

/// `application/x-www-form-urlencoded` bodies ('+' is a space there, unlike in FHIR queries).
enum FormBody {
    /// The fields, first value of each name. A form holding U+0000 (`%00`) anywhere is
    /// refused whole (``UnstorableInput``): no text a regulator or an admin types holds one,
    /// and neither database stores it (SQLite would keep what comes before it).
    static func parse(_ bytes: [UInt8]) throws(UnstorableInput) -> [String: String] {
        var fields: [String: String] = [:]
        let text = String(decoding: bytes, as: UTF8.self)
        for pair in text.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = (try? QueryParameters.percentDecode(Substring(parts[0].replacingOccurrences(of: "+", with: " ")))) ?? ""
            let value = parts.count > 1 ? ((try? QueryParameters.percentDecode(Substring(parts[1].replacingOccurrences(of: "+", with: " ")))) ?? "") : ""
            guard UnstorableInput.isStorable(name), UnstorableInput.isStorable(value) else { throw UnstorableInput(part: "form") }
            if fields[name] == nil { fields[name] = value }
        }
        return fields
    }
}

/// A request holding U+0000 (NUL) where text is read: in its form, its path or its query
/// (percent-encoded as `%00`). Refused as bad input before any store sees it (web: a French
/// 400 page; admin API: a JSON 400), the same on both databases, and nothing is changed.
struct UnstorableInput: Error, Sendable, Equatable {
    /// `form`, `path`, `query` or `body`: said in the answer, never the value itself.
    let part: String

    static func isStorable(_ text: some StringProtocol) -> Bool { !text.utf8.contains(0) }
}

/// Refuses a request whose path or query, percent-decoded, holds U+0000 (``UnstorableInput``),
/// so no handler reads such a text from `:ref`, `q`, `account` and the like. One concern: the
/// surface's error middleware, placed before it, answers the refusal in its own form.
struct UnstorableInputMiddleware<Context: RequestContext>: RouterMiddleware {
    /// Routes (as registered: `/api/accounts/{ref}`) under this prefix are left to a group's
    /// own instance of this middleware, placed after the group's authentication (the admin
    /// API: a request without its token gets its 401 and its audit row, whatever it holds).
    /// The matched route decides, not the address as sent: `//api/accounts` reaches the same
    /// route as `/api/accounts`.
    var exceptUnder: String?

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if let prefix = exceptUnder, context.endpointPath?.hasPrefix(prefix) == true { return try await next(request, context) }
        // A NUL can only arrive percent-encoded (the HTTP parser refuses a raw one in the
        // request line), as `%00` in any case: checking for that spelling is enough.
        if Self.holdsEncodedNUL(request.uri.path) { throw UnstorableInput(part: "path") }
        if let query = request.uri.query, Self.holdsEncodedNUL(query) { throw UnstorableInput(part: "query") }
        return try await next(request, context)
    }

    static func holdsEncodedNUL(_ text: String) -> Bool {
        text.utf8.contains(0) || text.contains("%00")
    }
}
