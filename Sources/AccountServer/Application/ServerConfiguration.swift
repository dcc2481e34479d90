import Accounts
import Foundation
import Logging
import Storage

/// Everything `serve` needs, resolved from flags, environment, file and defaults: what the
/// instance shares (database, hashing, logging), one typed configuration per listener, and
/// the web surface's behaviour. Tests build one directly.
struct ServerConfiguration: Sendable {
    /// `--database`: a SQLite file or a PostgreSQL server.
    var database: StorageLocation
    /// Connections to PostgreSQL (and threads running their transactions).
    var databasePoolSize: Int = 10
    /// Connections kept open when idle (`--database-pool-min`); nil: none.
    var databasePoolMinimum: Int?
    var argon2: Argon2Parameters = .owaspMinimum
    var argon2Threads: Int = max(1, ProcessInfo.processInfo.activeProcessorCount)
    /// Hashes waiting beyond which the web surface answers a sign-in or reset 503 at once
    /// (`--argon2-queue`): per-client limits do not bound a flood from many addresses.
    var argon2QueueLimit: Int = 64
    var logLevel: Logger.Level = .info
    /// From a request's first byte until it has arrived whole, on the FHIR, web and admin
    /// listeners; a slower sender is disconnected (handling time does not count).
    var requestReceiveTimeout: Duration = .seconds(60)
    /// Connections one client may hold at once on the web and FHIR listeners
    /// (``ConnectionLimiter``); 0: no limit.
    var maxConnectionsPerClient: Int = 256
    /// Addresses (CIDRs) not counted by that limit on either listener, beside each listener's
    /// trusted proxies: a load balancer or NAT that hides its clients' addresses.
    var connectionLimitExempt: [String] = []

    /// The SAS's listener: INT_R02, and the INT_R01 relay in topology 2.
    var fhir: FHIRListenerConfiguration
    /// Regulators' browsers.
    var web = WebListenerConfiguration()
    /// The vendor's proxy asks it before every agenda request.
    var forwardAuth = ForwardAuthListenerConfiguration()
    /// Health, readiness, metrics, admin API and page.
    var admin = AdminListenerConfiguration()

    // The web surface's behaviour (sign-in, mail, sessions, terms of use).
    var acceptedOrigins: [String] = ["sas"]
    /// Defaults to the public URL's host.
    var allowedReturnHosts: [String] = []
    var cguText: String = ServerConfiguration.developmentCGU
    var cguVersion: String?
    var smtpURL: String?
    /// `--smtp-allow-cleartext`: `smtp://` to a host other than this machine.
    var smtpAllowCleartext = false
    var sendmailCommand: [String]?
    var mailFrom: String?
    var mailPollInterval: Duration = .seconds(2)
    var secretKeyPath: String = "./data/secret.key"
    var lockout: LockoutPolicy = LockoutPolicy()
    var sessionIdleTimeout: TimeInterval = 30 * 60
    var sessionAbsoluteTimeout: TimeInterval = 12 * 3600
    var totpIssuer: String = "Espace régulateur"
    /// The deployment's notices, linked at the foot of every regulator page.
    var footer = PageFooter()
    var rateLimitPerMinute: Int = 10
    /// The clock of every rate limiter, regulators' and admin's (not a flag: tests move it).
    var rateLimitClock: MonotonicClock = .continuous
    /// How long ended sessions, dead reset links and outbox rows are kept before the purge
    /// deletes them (spent or expired intents and flows go at the next purge). The audit
    /// trail is never purged.
    var retention: TimeInterval = 30 * 86400
    var purgeInterval: Duration = .seconds(600)
    /// Sign-in through Pro Santé Connect (an OpenID Connect provider); nil: password only.
    var sso: SSOConfiguration?

    /// The CGU shown when no --cgu-file is given (development only; logged as such).
    static let developmentCGU = """
        Conditions générales d’utilisation — texte de développement.

        Ce texte remplace les conditions générales de l’éditeur tant que l’option --cgu-file n’est pas fournie. Il ne doit pas être utilisé en production.

        En accédant aux fonctions régulateur, vous vous engagez à n’utiliser l’agenda que pour la prise de rendez-vous de patients orientés par le Service d’Accès aux Soins.
        """
}

/// The FHIR listener: mutual TLS (or a TLS-terminating proxy forwarding the certificate,
/// topology 1), who may call, and where other FHIR requests go (topology 2).
struct FHIRListenerConfiguration: Sendable {
    var host: String
    var port: Int
    var tlsCertificatePath: String
    var tlsKeyPath: String
    var clientCAPaths: [String]
    var clientCRLPaths: [String]
    var allowedClientCommonNames: [String]
    var allowedClientOrganizationalUnits: [String]
    /// Accept client certificates whose issuer has no CRL loaded (`--allow-missing-crl`).
    /// Off: the server refuses to start without a CRL for every client CA, and refuses any
    /// certificate whose issuer has none (fail closed).
    var allowMissingCRL: Bool = false
    /// How often CRL files are checked for changes (SIGHUP reloads at once).
    var crlPollInterval: Duration = .seconds(5)
    /// The base of the URLs in `Location` and `fullUrl`; nil: taken from the request.
    var publicBaseURL: String?
    /// A connection idle this long between requests is closed (not a flag: the SAS keeps its
    /// connections busy; tests shorten it).
    var idleTimeout: Duration = .seconds(120)

    // Topology 1: behind the vendor's TLS-terminating proxy (docs/deployment.md).
    /// The header in which the proxy forwards the verified client certificate (e.g.
    /// `X-SSL-Client-Cert` set from nginx's `$ssl_client_escaped_cert`); nil: this product
    /// terminates mutual TLS itself.
    var clientCertificateHeader: String?
    /// The proxies (CIDRs) allowed to reach the FHIR listener and forward certificates.
    var trustedProxies: [String] = []
    /// Serve the FHIR listener over TLS (server certificate only) to the proxy.
    var proxyTLS: Bool = false
    /// Authenticate the proxy itself by mutual TLS (nginx `proxy_ssl_certificate`): the CA
    /// its client certificate chains to, the names (CN) it may carry, and optional CRLs. Then
    /// only the proxy, not any local process at its address, can forward a certificate.
    var proxyClientCAPaths: [String] = []
    var proxyClientNames: [String] = []
    var proxyClientCRLPaths: [String] = []

    // Topology 2: in front of the vendor's INT_R01 slot search.
    /// Where non-INT_R02 FHIR requests are relayed, and whose `/metadata` is merged.
    var upstream: UpstreamConfiguration?
}

/// The web listener (regulators' browsers): always HTTPS.
struct WebListenerConfiguration: Sendable {
    var host: String = "127.0.0.1"
    var port: Int = 8444
    /// Default to the FHIR listener's certificate and key.
    var tlsCertificatePath: String?
    var tlsKeyPath: String?
    /// Defaults to `https://localhost:<web port>`.
    var publicURL: String?
    /// Reverse proxies whose `X-Forwarded-For` is believed (CIDRs).
    var trustedProxies: [String] = []
}

/// The forward-auth listener: plain HTTP on loopback, TLS (the web certificate) elsewhere.
struct ForwardAuthListenerConfiguration: Sendable {
    var host: String = "127.0.0.1"
    var port: Int = 8446
    /// Serve it over TLS with the web certificate (required off loopback).
    var tls: Bool = false
    /// Nothing read or written for this long closes the connection, as the other listeners'
    /// 120 s (not a flag: tests shorten it).
    var idleTimeout: Duration = .seconds(120)
}

/// The admin listener: health, readiness, metrics, admin API and page, behind a token.
struct AdminListenerConfiguration: Sendable {
    var host: String = "127.0.0.1"
    var port: Int = 8445
    /// Serve it over TLS with the web certificate (required off loopback).
    var tls: Bool = false
    var tokenPath: String = "./data/admin.token"
    /// The vendor admins' own tokens (``AdminKeyring``): nil, none. `serve` defaults it to
    /// `admin-tokens` beside the shared token's file.
    var namedTokensPath: String?
    /// Whether the shared token of `tokenPath` opens the listener (`--no-shared-admin-token`:
    /// only the named ones; the shared file is then neither read nor created).
    var sharedToken: Bool = true
    /// An admin page session ends after this long without a request (`AdminSessions`).
    var sessionIdleTimeout: Duration = .seconds(30 * 60)
    /// An admin page session ends this long after its sign-in, however active.
    var sessionAbsoluteTimeout: Duration = .seconds(8 * 3600)
    /// The clock of those timeouts (not a flag: tests move it).
    var sessionClock: AdminSessions.Clock = .continuous
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
