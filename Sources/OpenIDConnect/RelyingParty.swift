import AsyncHTTPClient
import Crypto
import Foundation
import JWTKit
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

/// How the relying party authenticates to the token endpoint.
public enum ClientAuthentication: Sendable {
    /// `client_secret_basic` (RFC 6749 §2.3.1): id and secret form-encoded, then HTTP Basic.
    case clientSecretBasic(secret: String)
    /// `private_key_jwt` (OpenID Connect Core §9): a short-lived JWT signed with our key.
    case privateKeyJWT(ClientAssertionKey)

    public var methodName: String {
        switch self {
        case .clientSecretBasic: "client_secret_basic"
        case .privateKeyJWT: "private_key_jwt"
        }
    }
}

/// The private key of `private_key_jwt`, with the algorithm its type implies.
public struct ClientAssertionKey: Sendable {
    let collection: JWTKeyCollection
    public let algorithm: String
    public let kid: String?
    /// The public half as a JWK, for the provider's registration.
    public let publicJWK: [String: String]

    /// An RSA (RS256) or EC P-256 (ES256) private key in PEM.
    public static func load(pem: String, kid: String?) async throws -> ClientAssertionKey {
        let collection = JWTKeyCollection()
        let identifier = kid.map { JWKIdentifier(string: $0) }
        if let key = try? ES256PrivateKey(pem: pem) {
            await collection.add(ecdsa: key, kid: identifier)
            let parameters = key.parameters
            var jwk = ["kty": "EC", "crv": "P-256", "x": parameters?.x ?? "", "y": parameters?.y ?? "", "use": "sig", "alg": "ES256"]
            if let kid { jwk["kid"] = kid }
            return ClientAssertionKey(collection: collection, algorithm: "ES256", kid: kid, publicJWK: jwk)
        }
        let key = try Insecure.RSA.PrivateKey(pem: pem)
        await collection.add(rsa: key, digestAlgorithm: .sha256, kid: identifier)
        let primitives = try key.publicKey.getKeyPrimitives()
        var jwk = ["kty": "RSA", "n": Base64URL.encode(primitives.modulus), "e": Base64URL.encode(primitives.publicExponent), "use": "sig", "alg": "RS256"]
        if let kid { jwk["kid"] = kid }
        return ClientAssertionKey(collection: collection, algorithm: "RS256", kid: kid, publicJWK: jwk)
    }

    /// A compact JWS of `claims` with this key (header `typ` JWT, `kid` when set).
    public func sign(_ claims: ClaimSet) async throws -> String {
        var header = JWTHeader()
        header.typ = "JWT"
        return try await collection.sign(claims, kid: kid.map { JWKIdentifier(string: $0) }, header: header)
    }
}

/// Settings of the relying party. Endpoints come from discovery, never from here.
public struct RelyingPartyConfiguration: Sendable {
    public var issuer: String
    public var clientID: String
    public var clientAuthentication: ClientAuthentication
    /// Our callback, registered at the provider (`<public URL>/connexion/psc/retour`).
    public var redirectURI: String
    public var scope: String
    /// The `acr` the ID token must carry (PSC: `eidas1`), also sent as `acr_values`; nil: not checked.
    public var acr: String?
    /// Clock skew tolerated on `exp`, `iat` and `nbf`.
    public var leeway: TimeInterval = 60
    /// An ID token issued longer ago than this (plus the leeway) is refused.
    public var maxTokenAge: TimeInterval = 600
    public var allowedAlgorithms: Set<String> = ["RS256", "ES256"]
    /// Time limit of each provider request.
    public var requestTimeout: TimeInterval = 10
    /// An unknown `kid` refreshes the key set at most this often (a stream of forged `kid`s
    /// must not turn us into a load generator against the provider).
    public var keyRefreshInterval: TimeInterval = 10
    /// Discovery and keys are re-read after this long even without an unknown `kid`.
    public var metadataLifetime: TimeInterval = 3600

    public init(issuer: String, clientID: String, clientAuthentication: ClientAuthentication, redirectURI: String,
                scope: String = "openid scope_all", acr: String? = "eidas1") {
        self.issuer = issuer
        self.clientID = clientID
        self.clientAuthentication = clientAuthentication
        self.redirectURI = redirectURI
        self.scope = scope
        self.acr = acr
    }
}

/// What the token endpoint returned. The tokens are bearer secrets: never logged, never
/// audited (the description says so instead of printing them).
public struct TokenResponse: Sendable, CustomStringConvertible {
    public var idToken: String
    public var accessToken: String?
    public var tokenType: String?

    public var description: String { "TokenResponse(id_token: <redacted>, access_token: \(accessToken == nil ? "none" : "<redacted>"))" }
}

/// A verified ID token.
public struct IDToken: Sendable {
    public var subject: String
    /// The provider's session id (`sid`), for back-channel logout.
    public var sessionID: String?
    public var acr: String?
    /// When the provider last authenticated the user (`auth_time`), when it says: a session
    /// ended here remotely is opened again only by an authentication after its end.
    public var authenticatedAt: Date?
    public var expiresAt: Date
    public var claims: ClaimSet
    /// The compact token itself (for `id_token_hint` at sign-out only).
    public var raw: String
}

/// A verified logout token (OpenID Connect Back-Channel Logout 1.0 §2.4).
public struct LogoutToken: Sendable, Equatable {
    public var subject: String?
    public var sessionID: String?
    public var jti: String
}

/// Time spent waiting for the provider during one call, so the callback can report its own
/// share apart from the provider's round trips.
public final class ProviderTimer: Sendable {
    private let total = NIOLockedValueBox(Duration.zero)
    public init() {}
    public var elapsed: Duration { total.withLockedValue { $0 } }
    func measure<T>(_ body: () async throws -> T) async rethrows -> T {
        let start = ContinuousClock.now
        defer { let spent = ContinuousClock.now - start; total.withLockedValue { $0 += spent } }
        return try await body()
    }
}

/// An OpenID Connect relying party (authorization code flow with PKCE): discovery, the
/// provider's keys, the code exchange and every check on what comes back. It knows nothing
/// of accounts or sessions; the web surface decides what a verified identity opens.
public actor RelyingParty {
    public nonisolated let configuration: RelyingPartyConfiguration
    private let httpClient: HTTPClient
    private let clock: @Sendable () -> Date
    private let logger: Logger
    private var metadata: ProviderMetadata?
    private var keys: ProviderKeys?
    private var loadedAt: Date?
    /// When the last re-read began (successful or not): re-reads are at most this frequent.
    private var lastRefreshAttempt: Date?
    /// The re-read in progress, which concurrent callers share instead of starting their own.
    private var refreshInFlight: Task<Void, any Error>?
    /// The origin of the provider's `end_session_endpoint`, readable without awaiting the
    /// actor (pages allow it as a form target).
    private let endSessionOriginBox = NIOLockedValueBox<String?>(nil)

    public init(configuration: RelyingPartyConfiguration, httpClient: HTTPClient, logger: Logger = Logger(label: "oidc"),
                clock: @escaping @Sendable () -> Date = Date.init) {
        self.configuration = configuration
        self.httpClient = httpClient
        self.clock = clock
        self.logger = logger
    }

    // MARK: Discovery and keys

    /// The provider's metadata, read on first use and after `metadataLifetime`. When a re-read
    /// fails, the metadata and keys already held keep serving (a provider's brief outage must
    /// not stop sign-ins that need nothing new from it).
    public func providerMetadata(timer: ProviderTimer? = nil) async throws(OpenIDConnectError) -> ProviderMetadata {
        if let metadata, let loadedAt, clock().timeIntervalSince(loadedAt) < configuration.metadataLifetime { return metadata }
        do {
            try await refresh(timer: timer)
        } catch {
            guard let metadata else { throw error }
            logger.warning("the provider's metadata could not be re-read; the previous metadata and keys keep serving", metadata: ["error": "\(error)"])
            return metadata
        }
        return metadata!
    }

    /// Re-reads discovery and the key set (start-up, readiness, key rotation): one re-read at
    /// a time, shared by concurrent callers, and none sooner than `keyRefreshInterval` after
    /// the previous attempt, failed or not (so no caller, however many forged `kid`s it sends,
    /// makes us call the provider more often).
    public func refresh(timer: ProviderTimer? = nil) async throws(OpenIDConnectError) {
        let task: Task<Void, any Error>
        if let running = refreshInFlight {
            task = running
        } else {
            if let last = lastRefreshAttempt, clock().timeIntervalSince(last) < configuration.keyRefreshInterval {
                throw .provider("the provider was read less than \(Int(configuration.keyRefreshInterval)) s ago")
            }
            lastRefreshAttempt = clock()
            task = Task { try await self.load(timer: timer) }
            refreshInFlight = task
        }
        do {
            if let timer { try await timer.measure { try await task.value } } else { try await task.value }
        } catch let error as OpenIDConnectError {
            if refreshInFlight == task { refreshInFlight = nil }
            throw error
        } catch {
            if refreshInFlight == task { refreshInFlight = nil }
            throw .provider("\(error)")
        }
        if refreshInFlight == task { refreshInFlight = nil }
    }

    /// How many times discovery and keys were fetched (tests and the amplification bound).
    private(set) var loads = 0

    private func load(timer: ProviderTimer?) async throws(OpenIDConnectError) {
        loads += 1
        let document: ProviderMetadata
        do {
            let data = try await get(ProviderMetadata.discoveryURL(issuer: configuration.issuer), accept: "application/json", timer: timer)
            document = try JSONDecoder().decode(ProviderMetadata.self, from: data)
        } catch let error as OpenIDConnectError {
            throw .discovery(error.description)
        } catch {
            throw .discovery("the discovery document is not valid JSON metadata")
        }
        try document.validate(expectedIssuer: configuration.issuer)
        if let methods = document.codeChallengeMethodsSupported, !methods.contains("S256") {
            throw .discovery("the provider does not offer PKCE S256")
        }
        let keyData: Data
        do { keyData = try await get(document.jwksURI, accept: "application/json", timer: timer) } catch { throw .keys(error.description) }
        let parsed = try await ProviderKeys.parse(keyData)
        metadata = document
        keys = parsed
        loadedAt = clock()
        endSessionOriginBox.withLockedValue { $0 = document.endSessionEndpoint.flatMap(Self.origin(of:)) }
        logger.info("provider metadata and keys loaded", metadata: ["issuer": "\(configuration.issuer)", "keys": "\(parsed.keys.count)"])
    }

    /// The origin (`scheme://host[:port]`) of the provider's sign-out endpoint, once known.
    public nonisolated var endSessionOrigin: String? { endSessionOriginBox.withLockedValue { $0 } }

    static func origin(of url: String) -> String? {
        guard let components = URLComponents(string: url), let scheme = components.scheme, let host = components.host else { return nil }
        return "\(scheme)://\(host)\(components.port.map { ":\($0)" } ?? "")"
    }

    /// Whether discovery and keys are loaded (for readiness).
    public var isReady: Bool { metadata != nil && keys != nil }

    // MARK: Authorization request

    /// The URL that sends the browser to the provider. `state`, `nonce` and the PKCE verifier
    /// are the caller's (it binds them to the browser); the challenge is derived here.
    ///
    /// `maximumAuthenticationAge` (seconds): the user must have authenticated at the provider
    /// within that long, or type again (OpenID Connect Core §3.1.2.1: `prompt=login` and
    /// `max_age`, which also makes `auth_time` required in the ID token). Both are sent:
    /// Keycloak (which Pro Santé Connect runs) re-authenticates on either, and LemonLDAP::NG
    /// ignores `prompt=login` within a few seconds of its session's start but not `max_age`.
    public func authorizationURL(state: String, nonce: String, codeVerifier: String, maximumAuthenticationAge: Int? = nil,
                                 timer: ProviderTimer? = nil) async throws(OpenIDConnectError) -> String {
        let metadata = try await providerMetadata(timer: timer)
        var items = [
            URLQueryItem(name: "response_type", value: "code"),
            URLQueryItem(name: "client_id", value: configuration.clientID),
            URLQueryItem(name: "redirect_uri", value: configuration.redirectURI),
            URLQueryItem(name: "scope", value: configuration.scope),
            URLQueryItem(name: "state", value: state),
            URLQueryItem(name: "nonce", value: nonce),
            URLQueryItem(name: "code_challenge", value: Self.codeChallenge(for: codeVerifier)),
            URLQueryItem(name: "code_challenge_method", value: "S256"),
        ]
        if let acr = configuration.acr { items.append(URLQueryItem(name: "acr_values", value: acr)) }
        if let maximumAuthenticationAge {
            items.append(URLQueryItem(name: "prompt", value: "login"))
            items.append(URLQueryItem(name: "max_age", value: String(max(0, maximumAuthenticationAge))))
        }
        return Self.appendingQuery(items, to: metadata.authorizationEndpoint)
    }

    /// PKCE S256 (RFC 7636 §4.2).
    public static func codeChallenge(for verifier: String) -> String {
        Base64URL.encode(SHA256.hash(data: Data(verifier.utf8)))
    }

    /// A query string encoded strictly (RFC 3986 unreserved characters only), appended with
    /// `?` or `&` as the endpoint requires.
    static func appendingQuery(_ items: [URLQueryItem], to endpoint: String) -> String {
        let query = items.map { "\(formEncode($0.name))=\(formEncode($0.value ?? ""))" }.joined(separator: "&")
        return endpoint + (endpoint.contains("?") ? "&" : "?") + query
    }

    static func formEncode(_ text: String) -> String {
        var allowed = CharacterSet.alphanumerics.intersection(CharacterSet(charactersIn: Unicode.Scalar(0)..<Unicode.Scalar(128)))
        allowed.insert(charactersIn: "-._~")
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? ""
    }

    // MARK: Code exchange

    /// Redeems an authorization code at the token endpoint (with the PKCE verifier and our
    /// client authentication).
    public func redeem(code: String, codeVerifier: String, timer: ProviderTimer? = nil) async throws(OpenIDConnectError) -> TokenResponse {
        let metadata = try await providerMetadata(timer: timer)
        var fields = [("grant_type", "authorization_code"), ("code", code), ("redirect_uri", configuration.redirectURI),
                      ("code_verifier", codeVerifier)]
        var headers = HTTPHeaders([("Content-Type", "application/x-www-form-urlencoded"), ("Accept", "application/json")])
        switch configuration.clientAuthentication {
        case .clientSecretBasic(let secret):
            let credentials = "\(Self.formEncode(configuration.clientID)):\(Self.formEncode(secret))"
            headers.add(name: "Authorization", value: "Basic \(Data(credentials.utf8).base64EncodedString())")
        case .privateKeyJWT(let key):
            fields.append(("client_id", configuration.clientID))
            fields.append(("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"))
            fields.append(("client_assertion", try await clientAssertion(key: key, audience: metadata.tokenEndpoint)))
        }
        let body = fields.map { "\(Self.formEncode($0.0))=\(Self.formEncode($0.1))" }.joined(separator: "&")
        let (status, data) = try await send(metadata.tokenEndpoint, method: .POST, headers: headers, body: body, timer: timer)
        struct Answer: Decodable {
            var id_token: String?
            var access_token: String?
            var token_type: String?
            var error: String?
        }
        let answer = try? JSONDecoder().decode(Answer.self, from: data)
        guard status == 200 else {
            // The provider's error code (`invalid_grant`…) is safe to report; its description is not ours to echo.
            throw .tokenEndpoint(status: status, error: answer?.error.map { String($0.prefix(64)) })
        }
        guard let answer, let idToken = answer.id_token else { throw .tokenEndpoint(status: status, error: "no id_token") }
        if let type = answer.token_type, type.lowercased() != "bearer" { throw .tokenEndpoint(status: status, error: "token_type \(type)") }
        return TokenResponse(idToken: idToken, accessToken: answer.access_token, tokenType: answer.token_type)
    }

    func clientAssertion(key: ClientAssertionKey, audience: String) async throws(OpenIDConnectError) -> String {
        let now = clock().timeIntervalSince1970.rounded(.down)
        let claims = ClaimSet(claims: [
            "iss": .string(configuration.clientID), "sub": .string(configuration.clientID), "aud": .string(audience),
            "jti": .string(Base64URL.encode(SymmetricKey(size: .bits256).withUnsafeBytes { Array($0) })),
            "iat": .number(now), "exp": .number(now + 60),
        ])
        do { return try await key.sign(claims) } catch {
            throw .provider("the client assertion could not be signed")
        }
    }

    // MARK: Token checks

    /// Verifies a JWS against the provider's keys, refreshing them once on an unknown `kid`.
    func verifySignature(_ token: String, timer: ProviderTimer? = nil) async throws(OpenIDConnectError) -> (ClaimSet, ProviderKeys.Header) {
        let header = try ProviderKeys.header(of: token)
        if keys == nil { _ = try await providerMetadata(timer: timer) }
        guard keys != nil else { throw .keys("the provider's keys are not loaded") }
        var allowed = configuration.allowedAlgorithms
        if let advertised = metadata?.idTokenSigningAlgValuesSupported { allowed.formIntersection(advertised) }
        if case .verified(let claims) = try await keys!.verify(token, header: header, allowed: allowed) { return (claims, header) }
        // An unknown key: the provider may have rotated. Re-read the set (at most so often).
        // A re-read refused as too soon may be the one that just loaded this key (two
        // callbacks with the new key arriving together, or a forged `kid` just before the
        // rotation): the keys held now are checked either way.
        try? await refresh(timer: timer)
        if case .verified(let claims) = try await keys!.verify(token, header: header, allowed: allowed) { return (claims, header) }
        throw .signature("no key \(header.kid.map { String($0.prefix(64)).debugDescription } ?? "for \(header.alg)") in the provider's key set")
    }

    /// The ID token checks of OpenID Connect Core §3.1.3.7: signature, issuer, audience (and
    /// `azp`), expiry, issue time, nonce, and the configured `acr`.
    public func validateIDToken(_ token: String, nonce expectedNonce: String, timer: ProviderTimer? = nil) async throws(OpenIDConnectError) -> IDToken {
        let (claims, _) = try await verifySignature(token, timer: timer)
        let now = clock().timeIntervalSince1970
        try checkIssuerAndAudience(claims)
        guard let exp = claims["exp"]?.seconds else { throw .claim("exp", "missing") }
        guard exp + configuration.leeway > now else { throw .claim("exp", "the token has expired") }
        guard let iat = claims["iat"]?.seconds else { throw .claim("iat", "missing") }
        guard iat <= now + configuration.leeway else { throw .claim("iat", "issued in the future") }
        guard now - iat <= configuration.maxTokenAge + configuration.leeway else { throw .claim("iat", "issued too long ago") }
        if let nbf = claims["nbf"]?.seconds, nbf > now + configuration.leeway { throw .claim("nbf", "not yet valid") }
        guard let nonce = claims.string("nonce") else { throw .claim("nonce", "missing") }
        guard Self.constantTimeEquals(nonce, expectedNonce) else { throw .claim("nonce", "does not match the request") }
        guard let subject = claims.string("sub"), !subject.isEmpty else { throw .claim("sub", "missing") }
        let acr = claims.string("acr")
        if let expected = configuration.acr, acr != expected {
            throw .claim("acr", "\(acr.map(\.debugDescription) ?? "none") where \(expected.debugDescription) is required")
        }
        var authenticatedAt: Date?
        if let value = claims["auth_time"] {
            guard let seconds = value.seconds, seconds.isFinite else { throw .claim("auth_time", "not a number") }
            guard seconds >= 0 else { throw .claim("auth_time", "before 1970") }
            guard seconds <= now + configuration.leeway else { throw .claim("auth_time", "in the future") }
            authenticatedAt = Date(timeIntervalSince1970: seconds)
        }
        return IDToken(subject: subject, sessionID: claims.string("sid"), acr: acr, authenticatedAt: authenticatedAt,
                       expiresAt: Date(timeIntervalSince1970: exp), claims: claims, raw: token)
    }

    func checkIssuerAndAudience(_ claims: ClaimSet) throws(OpenIDConnectError) {
        guard claims.string("iss") == configuration.issuer else { throw .claim("iss", "not the configured issuer") }
        guard let audiences = claims["aud"]?.strings, !audiences.isEmpty else { throw .claim("aud", "missing") }
        guard audiences.contains(configuration.clientID) else { throw .claim("aud", "the token is not for this client") }
        guard audiences.allSatisfy({ $0 == configuration.clientID }) else { throw .claim("aud", "the token names other audiences") }
        if let azp = claims["azp"], azp.singleString != configuration.clientID { throw .claim("azp", "not this client") }
    }

    /// The userinfo claims (plain JSON, or a signed JWT as PSC may answer), for the subject of
    /// the ID token.
    public func userinfo(accessToken: String, subject: String, timer: ProviderTimer? = nil) async throws(OpenIDConnectError) -> ClaimSet {
        let metadata = try await providerMetadata(timer: timer)
        guard let endpoint = metadata.userinfoEndpoint else { throw .provider("the provider has no userinfo endpoint") }
        let headers = HTTPHeaders([("Authorization", "Bearer \(accessToken)"), ("Accept", "application/json, application/jwt")])
        let (status, data, contentType) = try await sendWithType(endpoint, method: .GET, headers: headers, body: nil, timer: timer)
        guard status == 200 else { throw .provider("userinfo answered HTTP \(status)") }
        let claims: ClaimSet
        if contentType.hasPrefix("application/jwt") {
            let token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard token.split(separator: ".", omittingEmptySubsequences: false).count == 3 else {
                throw .signature("the userinfo JWT is not a signed JWS (encrypted userinfo is not supported)")
            }
            let (verified, _) = try await verifySignature(token, timer: timer)
            // A signed userinfo SHOULD carry iss and aud (Core §5.3.2); when present they must be right.
            if verified["iss"] != nil || verified["aud"] != nil { try checkIssuerAndAudience(verified) }
            claims = verified
        } else {
            guard let decoded = try? JSONDecoder().decode(ClaimSet.self, from: data) else { throw .provider("userinfo is not a JSON object") }
            claims = decoded
        }
        guard claims.string("sub") == subject else { throw .claim("sub", "userinfo is about another subject than the ID token") }
        return claims
    }

    /// Back-Channel Logout 1.0 §2.6: signature, issuer, audience, `iat`, the logout event, no
    /// `nonce`, a `sub` or a `sid`, and a `jti`. That the `jti` was not seen before is the
    /// caller's check, made where every instance sees it (the database) in the transaction
    /// that acts on the token: a memory here would be one instance's.
    public func validateLogoutToken(_ token: String) async throws(OpenIDConnectError) -> LogoutToken {
        let (claims, header) = try await verifySignature(token)
        if let typ = header.typ, typ.lowercased() != "logout+jwt", typ.uppercased() != "JWT" {
            throw .signature("typ \(String(typ.prefix(64)).debugDescription) is not a logout token")
        }
        try checkIssuerAndAudience(claims)
        let now = clock().timeIntervalSince1970
        guard let iat = claims["iat"]?.seconds else { throw .claim("iat", "missing") }
        guard iat <= now + configuration.leeway, now - iat <= configuration.maxTokenAge + configuration.leeway else { throw .claim("iat", "out of range") }
        // Back-Channel Logout 1.0 (final, December 2023) requires `exp`, but providers built
        // before it (Keycloak until 22.0.x/23.0.4, which Pro Santé Connect runs on) leave it
        // out: requiring it would silently switch back-channel logout off. `iat` bounds the
        // token's age instead; an `exp` that is there must not be past.
        if let exp = claims["exp"]?.seconds, exp + configuration.leeway <= now { throw .claim("exp", "the token has expired") }
        guard case .object(let events)? = claims["events"], events["http://schemas.openid.net/event/backchannel-logout"] != nil else {
            throw .claim("events", "no back-channel logout event")
        }
        guard claims["nonce"] == nil else { throw .claim("nonce", "a logout token must not carry one") }
        let subject = claims.string("sub")
        let sessionID = claims.string("sid")
        guard subject != nil || sessionID != nil else { throw .claim("sub", "neither sub nor sid") }
        guard let jti = claims.string("jti"), !jti.isEmpty else { throw .claim("jti", "missing") }
        return LogoutToken(subject: subject, sessionID: sessionID, jti: jti)
    }

    // MARK: Sign-out

    /// RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0): where to send the browser
    /// after the local session has ended; nil when the provider offers no `end_session_endpoint`.
    public func endSessionURL(idTokenHint: String?, postLogoutRedirectURI: String, state: String? = nil) async -> String? {
        guard let metadata = try? await providerMetadata(), let endpoint = metadata.endSessionEndpoint else { return nil }
        var items = [URLQueryItem(name: "client_id", value: configuration.clientID),
                     URLQueryItem(name: "post_logout_redirect_uri", value: postLogoutRedirectURI)]
        if let idTokenHint { items.insert(URLQueryItem(name: "id_token_hint", value: idTokenHint), at: 0) }
        if let state { items.append(URLQueryItem(name: "state", value: state)) }
        return Self.appendingQuery(items, to: endpoint)
    }

    // MARK: HTTP

    static let maximumBody = 1 << 20

    func get(_ url: String, accept: String, timer: ProviderTimer?) async throws(OpenIDConnectError) -> Data {
        let (status, data) = try await send(url, method: .GET, headers: HTTPHeaders([("Accept", accept)]), body: nil, timer: timer)
        guard status == 200 else { throw .provider("\(URLComponents(string: url)?.path ?? "request") answered HTTP \(status)") }
        return data
    }

    func send(_ url: String, method: HTTPMethod, headers: HTTPHeaders, body: String?, timer: ProviderTimer?) async throws(OpenIDConnectError) -> (Int, Data) {
        let (status, data, _) = try await sendWithType(url, method: method, headers: headers, body: body, timer: timer)
        return (status, data)
    }

    func sendWithType(_ url: String, method: HTTPMethod, headers: HTTPHeaders, body: String?, timer: ProviderTimer?) async throws(OpenIDConnectError) -> (Int, Data, String) {
        var request = HTTPClientRequest(url: url)
        request.method = method
        request.headers = headers
        request.headers.replaceOrAdd(name: "User-Agent", value: "account-server")
        if let body { request.body = .bytes(ByteBuffer(string: body)) }
        let client = httpClient, prepared = request
        let timeout = TimeAmount.milliseconds(Int64(configuration.requestTimeout * 1000))
        // One deadline for the whole exchange, body included: AsyncHTTPClient's ends with the
        // response head, and a provider trickling its keys would otherwise hold every
        // callback waiting on the shared re-read for as long as it kept sending.
        let perform: () async throws -> (Int, Data, String) = {
            try await withThrowingTaskGroup(of: (Int, Data, String)?.self) { group in
                group.addTask {
                    let response = try await client.execute(prepared, timeout: timeout)
                    let bytes = try await response.body.collect(upTo: Self.maximumBody)
                    return (Int(response.status.code), Data(bytes.readableBytesView), response.headers.first(name: "Content-Type")?.lowercased() ?? "")
                }
                group.addTask {
                    try await Task.sleep(nanoseconds: UInt64(timeout.nanoseconds))
                    return nil
                }
                defer { group.cancelAll() }
                guard let first = try await group.next(), let answer = first else { throw ProviderDeadline() }
                return answer
            }
        }
        do {
            if let timer { return try await timer.measure(perform) }
            return try await perform()
        } catch {
            throw .provider("\(URLComponents(string: url)?.host ?? "provider") could not be reached (\(type(of: error)))")
        }
    }

    static func constantTimeEquals(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        guard x.count == y.count else { return false }
        return zip(x, y).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }
}

/// The provider's exchange outlasted ``RelyingPartyConfiguration/requestTimeout``.
struct ProviderDeadline: Error {}
