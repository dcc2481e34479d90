import Foundation

/// The provider's discovery document (OpenID Connect Discovery 1.0 §3), the fields this
/// relying party uses. Read at start and refreshed with the key set; endpoints are never
/// configured by hand, so a provider's move is followed without a restart.
public struct ProviderMetadata: Sendable, Equatable, Decodable {
    public var issuer: String
    public var authorizationEndpoint: String
    public var tokenEndpoint: String
    public var userinfoEndpoint: String?
    public var jwksURI: String
    public var endSessionEndpoint: String?
    public var idTokenSigningAlgValuesSupported: [String]?
    public var tokenEndpointAuthMethodsSupported: [String]?
    public var codeChallengeMethodsSupported: [String]?
    public var backchannelLogoutSupported: Bool?
    public var backchannelLogoutSessionSupported: Bool?
    public var acrValuesSupported: [String]?
    /// RFC 9207 §3: the provider names itself (`iss`) in every authorization answer.
    public var authorizationResponseIssParameterSupported: Bool?

    enum CodingKeys: String, CodingKey {
        case issuer
        case authorizationEndpoint = "authorization_endpoint"
        case tokenEndpoint = "token_endpoint"
        case userinfoEndpoint = "userinfo_endpoint"
        case jwksURI = "jwks_uri"
        case endSessionEndpoint = "end_session_endpoint"
        case idTokenSigningAlgValuesSupported = "id_token_signing_alg_values_supported"
        case tokenEndpointAuthMethodsSupported = "token_endpoint_auth_methods_supported"
        case codeChallengeMethodsSupported = "code_challenge_methods_supported"
        case backchannelLogoutSupported = "backchannel_logout_supported"
        case backchannelLogoutSessionSupported = "backchannel_logout_session_supported"
        case acrValuesSupported = "acr_values_supported"
        case authorizationResponseIssParameterSupported = "authorization_response_iss_parameter_supported"
    }

    /// The discovery URL of an issuer (§4: the issuer, then `/.well-known/openid-configuration`).
    public static func discoveryURL(issuer: String) -> String {
        (issuer.hasSuffix("/") ? String(issuer.dropLast()) : issuer) + "/.well-known/openid-configuration"
    }

    /// Checks §4.3: the document names exactly the configured issuer, and every endpoint is
    /// https (http only on loopback, for development).
    func validate(expectedIssuer: String) throws(OpenIDConnectError) {
        guard issuer == expectedIssuer else {
            throw .discovery("the document names issuer \(issuer.debugDescription), not the configured \(expectedIssuer.debugDescription)")
        }
        // http only when the issuer itself is a development one on loopback: a real
        // provider's document naming an http endpoint on this host would have the code, the
        // client's credentials or the keys go in clear to whatever listens there.
        let loopbackIssuer = URLComponents(string: issuer).map { $0.scheme?.lowercased() == "http" && Self.isLoopback($0.host) } ?? false
        for (name, url) in [("authorization_endpoint", authorizationEndpoint), ("token_endpoint", tokenEndpoint), ("jwks_uri", jwksURI),
                            ("userinfo_endpoint", userinfoEndpoint ?? "https://x"), ("end_session_endpoint", endSessionEndpoint ?? "https://x")] {
            guard Self.isAcceptableEndpoint(url, loopbackIssuer: loopbackIssuer) else { throw .discovery("\(name) is not an https URL") }
        }
    }

    static func isAcceptableEndpoint(_ text: String, loopbackIssuer: Bool) -> Bool {
        guard let components = URLComponents(string: text), let host = components.host, !host.isEmpty else { return false }
        switch components.scheme?.lowercased() {
        case "https": return true
        case "http": return loopbackIssuer && isLoopback(host)
        default: return false
        }
    }

    static func isLoopback(_ host: String?) -> Bool {
        ["localhost", "127.0.0.1", "::1", "[::1]"].contains(host ?? "")
    }
}
