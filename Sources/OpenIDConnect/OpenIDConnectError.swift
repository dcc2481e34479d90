/// Why the relying party refused a provider answer. Every case names what failed, never a
/// token's value, so it can be logged and audited as is.
public enum OpenIDConnectError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The discovery document could not be read or does not describe the configured issuer.
    case discovery(String)
    /// The key set could not be read.
    case keys(String)
    /// The provider could not be reached or answered with an HTTP error.
    case provider(String)
    /// The token endpoint refused the code (replayed, expired, wrong verifier, wrong client).
    case tokenEndpoint(status: Int, error: String?)
    /// A JWT is malformed, uses a refused algorithm, names no known key, or its signature does
    /// not verify.
    case signature(String)
    /// A claim is missing or wrong; the claim's name and the reason.
    case claim(String, String)
    /// The callback carried an `error` from the provider (`access_denied`, `login_required`…).
    case providerError(String)

    public var description: String {
        switch self {
        case .discovery(let reason): "discovery: \(reason)"
        case .keys(let reason): "keys: \(reason)"
        case .provider(let reason): "provider: \(reason)"
        case .tokenEndpoint(let status, let error): "token endpoint: HTTP \(status)\(error.map { " \($0)" } ?? "")"
        case .signature(let reason): "signature: \(reason)"
        case .claim(let name, let reason): "claim \(name): \(reason)"
        case .providerError(let error): "provider error: \(error)"
        }
    }

    /// A short machine label for metrics and audit outcomes.
    public var label: String {
        switch self {
        case .discovery: "discovery"
        case .keys: "keys"
        case .provider: "provider-unreachable"
        case .tokenEndpoint: "code-refused"
        case .signature: "signature"
        case .claim(let name, _): "claim-\(name)"
        case .providerError: "provider-error"
        }
    }
}
