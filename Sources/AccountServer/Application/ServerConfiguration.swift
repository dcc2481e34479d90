import Accounts
import Foundation
import Logging
import Storage

/// Everything `serve` needs, resolved from flags, environment and defaults. Tests build one
/// directly.
struct ServerConfiguration: Sendable {
    /// `--database`: a SQLite file or a PostgreSQL server.
    var database: StorageLocation
    /// Connections to PostgreSQL (and threads running their transactions).
    var databasePoolSize: Int = 10
    var fhirHost: String
    var fhirPort: Int
    var tlsCertificatePath: String
    var tlsKeyPath: String
    var clientCAPaths: [String]
    var clientCRLPaths: [String]
    var allowedClientCommonNames: [String]
    var allowedClientOrganizationalUnits: [String]
    var publicBaseURL: String?
    var argon2: Argon2Parameters = .owaspMinimum
    var argon2Threads: Int = max(1, ProcessInfo.processInfo.activeProcessorCount)
    /// Accept client certificates whose issuer has no CRL loaded (`--allow-missing-crl`).
    /// Off: the server refuses to start without a CRL for every client CA, and refuses any
    /// certificate whose issuer has none (fail closed).
    var allowMissingCRL: Bool = false
    /// How often CRL files are checked for changes (SIGHUP reloads at once).
    var crlPollInterval: Duration = .seconds(5)
    var logLevel: Logger.Level = .info
    /// From a request's first byte until it has arrived whole, on the FHIR, web and admin
    /// listeners; a slower sender is disconnected (handling time does not count).
    var requestReceiveTimeout: Duration = .seconds(60)

    // Topology 1: behind the vendor's TLS-terminating proxy (docs/deployment.md).
    /// The header in which the proxy forwards the verified client certificate (e.g.
    /// `X-SSL-Client-Cert` set from nginx's `$ssl_client_escaped_cert`); nil: this product
    /// terminates mutual TLS itself.
    var fhirClientCertificateHeader: String?
    /// The proxies (CIDRs) allowed to reach the FHIR listener and forward certificates.
    var fhirTrustedProxies: [String] = []
    /// Serve the FHIR listener over TLS (server certificate only) to the proxy.
    var fhirProxyTLS: Bool = false
    /// Authenticate the proxy itself by mutual TLS (nginx `proxy_ssl_certificate`): the CA
    /// its client certificate chains to, the names (CN) it may carry, and optional CRLs. Then
    /// only the proxy, not any local process at its address, can forward a certificate.
    var fhirProxyClientCAPaths: [String] = []
    var fhirProxyClientNames: [String] = []
    var fhirProxyClientCRLPaths: [String] = []

    // Topology 2: in front of the vendor's INT_R01 slot search.
    /// Where non-INT_R02 FHIR requests are relayed, and whose `/metadata` is merged.
    var fhirUpstream: UpstreamConfiguration?

    // Web surface (regulators' browsers).
    var webHost: String = "127.0.0.1"
    var webPort: Int = 8444
    /// Defaults to the FHIR listener's certificate and key.
    var webTLSCertificatePath: String?
    var webTLSKeyPath: String?
    /// Defaults to `https://localhost:<web port>`.
    var publicURL: String?
    var acceptedOrigins: [String] = ["sas"]
    /// Defaults to the public URL's host.
    var allowedReturnHosts: [String] = []
    var cguText: String = ServerConfiguration.developmentCGU
    var cguVersion: String?
    var smtpURL: String?
    var sendmailCommand: [String]?
    var mailFrom: String?
    var mailPollInterval: Duration = .seconds(2)
    var secretKeyPath: String = "./data/secret.key"
    var lockout: LockoutPolicy = LockoutPolicy()
    var sessionIdleTimeout: TimeInterval = 30 * 60
    var sessionAbsoluteTimeout: TimeInterval = 12 * 3600
    var totpIssuer: String = "Espace régulateur"
    var rateLimitPerMinute: Int = 10
    /// How long ended sessions, dead reset links and outbox rows are kept before the purge
    /// deletes them (spent or expired intents and flows go at the next purge). The audit
    /// trail is never purged.
    var retention: TimeInterval = 30 * 86400
    var purgeInterval: Duration = .seconds(600)
    /// Reverse proxies whose `X-Forwarded-For` is believed on the web listener (CIDRs).
    var trustedProxies: [String] = []
    /// Sign-in through Pro Santé Connect (an OpenID Connect provider); nil: password only.
    var sso: SSOConfiguration?

    // Forward-auth listener (the vendor's proxy asks it before every agenda request).
    var forwardAuthHost: String = "127.0.0.1"
    var forwardAuthPort: Int = 8446
    /// Serve it over TLS with the web certificate (required off loopback).
    var forwardAuthTLS: Bool = false

    // Admin listener (health, readiness, metrics, admin API and page).
    var adminHost: String = "127.0.0.1"
    var adminPort: Int = 8445
    /// Serve the admin listener over TLS with the web certificate (required off loopback).
    var adminTLS: Bool = false
    var adminTokenPath: String = "./data/admin.token"

    /// The CGU shown when no --cgu-file is given (development only; logged as such).
    static let developmentCGU = """
        Conditions générales d’utilisation — texte de développement.

        Ce texte remplace les conditions générales de l’éditeur tant que l’option --cgu-file n’est pas fournie. Il ne doit pas être utilisé en production.

        En accédant aux fonctions régulateur, vous vous engagez à n’utiliser l’agenda que pour la prise de rendez-vous de patients orientés par le Service d’Accès aux Soins.
        """
}

/// A configuration problem found before anything starts; printed and the process exits.
struct ConfigurationError: Error, CustomStringConvertible {
    var description: String
}

/// `--oidc-*`: the OpenID Connect provider (Pro Santé Connect) and this client's registration
/// there. Endpoints come from the issuer's discovery document. See docs/sso.md.
struct SSOConfiguration: Sendable {
    var issuer: String
    var clientID: String
    /// `client_secret_basic`: a file holding the client secret (trailing newline ignored).
    var clientSecretPath: String?
    /// `private_key_jwt`: our private key (PEM, RSA or EC P-256) and its `kid`.
    var clientKeyPath: String?
    var clientKeyID: String?
    /// The `acr` required of ID tokens (PSC: `eidas1`); "" disables the check.
    var acr: String = "eidas1"
    var scope: String = "openid scope_all"
    /// CA bundle for the provider's TLS certificate; nil: the system trust store.
    var caPath: String?
    /// The claim carrying the national id (IDNPS), in userinfo or the ID token.
    var nationalIDClaim: String = "SubjectNameID"
}
