import Accounts
import ArgumentParser
import Configuration
import Foundation
import Storage
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle

/// `account-server serve`: runs the FHIR mutual-TLS listener. With no TLS flag at all it
/// generates and uses a development PKI under `./data/pki` and prints a ready-to-paste curl.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "serve", abstract: "Run the server (see docs/configuration.md).")

    @Option(help: "SQLite database file, or a postgres:// URL (several instances share one PostgreSQL). Env: ACCOUNT_SERVER_DATABASE. Default: ./data/account-server.sqlite")
    var database: String?

    @Option(help: "PostgreSQL connections (each with a thread running its transactions). Env: ACCOUNT_SERVER_DATABASE_POOL_SIZE. Default: 10")
    var databasePoolSize: Int?

    @Option(help: "PostgreSQL connections kept open even when idle (0 … pool size); the others close after a minute idle. Env: ACCOUNT_SERVER_DATABASE_POOL_MIN. Default: 0")
    var databasePoolMin: Int?

    @Option(help: "FHIR listener (mutual TLS, or plain HTTP to a trusted proxy with --fhir-client-certificate-header), HOST:PORT. Env: ACCOUNT_SERVER_FHIR_ADDRESS. Default: 127.0.0.1:8443")
    var fhirAddress: String?

    @Option(help: "Server certificate chain (PEM). Env: ACCOUNT_SERVER_TLS_CERTIFICATE")
    var tlsCertificate: String?

    @Option(help: "Server private key (PEM). Env: ACCOUNT_SERVER_TLS_KEY")
    var tlsKey: String?

    @Option(help: "CA certificates (PEM) client certificates must chain to; repeatable. Env: ACCOUNT_SERVER_CLIENT_CA (comma-separated)")
    var clientCa: [String] = []

    @Option(help: "CRL file (PEM or DER), reloaded on SIGHUP and on change; repeatable. Env: ACCOUNT_SERVER_CLIENT_CRL (comma-separated)")
    var clientCrl: [String] = []

    @Option(help: "Allowed client certificate CN; repeatable, at least one. Env: ACCOUNT_SERVER_ALLOWED_CLIENT_CN (comma-separated)")
    var allowedClientCn: [String] = []

    @Option(help: "Allowed client certificate OU; repeatable, at least one. Env: ACCOUNT_SERVER_ALLOWED_CLIENT_OU (comma-separated)")
    var allowedClientOu: [String] = []

    @Option(help: "FHIR base URL used in Location headers, e.g. https://fhir.example.fr/sas. Env: ACCOUNT_SERVER_PUBLIC_BASE_URL. Default: https://<Host header>")
    var publicBaseUrl: String?

    @Option(help: "argon2id memory in KiB. Env: ACCOUNT_SERVER_ARGON2_MEMORY_KIB. Default: 19456 (19 MiB)")
    var argon2MemoryKib: UInt32?

    @Option(help: "argon2id iterations. Env: ACCOUNT_SERVER_ARGON2_ITERATIONS. Default: 2")
    var argon2Iterations: UInt32?

    @Option(help: "argon2id parallelism. Env: ACCOUNT_SERVER_ARGON2_PARALLELISM. Default: 1")
    var argon2Parallelism: UInt32?

    @Option(help: "Threads hashing passwords at once. Env: ACCOUNT_SERVER_ARGON2_THREADS. Default: number of cores")
    var argon2Threads: Int?

    @Option(help: "Password hashes waiting or running beyond which a sign-in or password reset is answered 503 at once. Env: ACCOUNT_SERVER_ARGON2_QUEUE. Default: 64")
    var argon2Queue: Int?

    @Flag(inversion: .prefixedNo, help: "Allow --smtp-url smtp:// (no TLS) to a host other than this machine: reset links then cross the network in clear. Env: ACCOUNT_SERVER_SMTP_ALLOW_CLEARTEXT")
    var smtpAllowCleartext: Bool?

    @Flag(inversion: .prefixedNo, help: "Accept client certificates whose CA has no CRL loaded (revocation NOT checked for them; logged at start, shown by /readyz). Without it the server refuses to start, and refuses such certificates. Env: ACCOUNT_SERVER_ALLOW_MISSING_CRL (--no-… turns it off over the environment and the file)")
    var allowMissingCrl: Bool?

    @Option(help: "Days ended sessions, dead password reset links and mail outbox rows are kept before they are purged (the audit trail is never purged). Env: ACCOUNT_SERVER_RETENTION_DAYS. Default: 30")
    var retentionDays: Int?

    @Option(help: "Seconds between CRL file change checks, 1 to 86400. Env: ACCOUNT_SERVER_CRL_POLL_SECONDS. Default: 5")
    var crlPollSeconds: Int?

    @Option(help: "Directory of the development PKI used when no TLS flag is given. Env: ACCOUNT_SERVER_DEV_PKI. Default: ./data/pki")
    var devPki: String?

    @Option(help: "trace, debug, info, notice, warning, error, critical. Env: ACCOUNT_SERVER_LOG_LEVEL. Default: info")
    var logLevel: String?

    @Option(help: "Web (regulators' browsers) HTTPS listener, HOST:PORT. Env: ACCOUNT_SERVER_WEB_ADDRESS. Default: 127.0.0.1:8444")
    var webAddress: String?

    @Option(help: "Web certificate chain (PEM). Env: ACCOUNT_SERVER_WEB_TLS_CERTIFICATE. Default: --tls-certificate")
    var webTlsCertificate: String?

    @Option(help: "Web private key (PEM). Env: ACCOUNT_SERVER_WEB_TLS_KEY. Default: --tls-key")
    var webTlsKey: String?

    @Option(help: "The web surface's base URL as browsers see it (links in mails). Env: ACCOUNT_SERVER_PUBLIC_URL. Default: https://localhost:<web port>")
    var publicUrl: String?

    @Option(help: "origin value that marks a SAS redirect; repeatable. Env: ACCOUNT_SERVER_SAS_ORIGIN. Default: sas")
    var sasOrigin: [String] = []

    @Option(help: "Host (or host:port) the browser may return to after sign-in; repeatable. Env: ACCOUNT_SERVER_ALLOWED_RETURN_HOST. Default: the public URL's host (host:port when it has a port)")
    var allowedReturnHost: [String] = []

    @Option(help: "Terms of use (CGU) text file, UTF-8. Env: ACCOUNT_SERVER_CGU_FILE. Default: a development text")
    var cguFile: String?

    @Option(help: "CGU version label. Env: ACCOUNT_SERVER_CGU_VERSION. Default: the first 12 hex digits of the file's SHA-256")
    var cguVersion: String?

    @Option(help: "SMTP relay, smtp://host[:port] or smtps://host[:port]. Env: ACCOUNT_SERVER_SMTP_URL")
    var smtpUrl: String?

    @Option(help: "sendmail-compatible command instead of SMTP, e.g. '/usr/sbin/sendmail -i'. Env: ACCOUNT_SERVER_SENDMAIL_COMMAND")
    var sendmailCommand: String?

    @Option(help: "Sender address of mails. Env: ACCOUNT_SERVER_MAIL_FROM. Default: no-reply@<public host>")
    var mailFrom: String?

    @Option(help: "Server secret key file (32 bytes; created mode 0600 if absent). Env: ACCOUNT_SERVER_SECRET_KEY_FILE. Default: ./data/secret.key")
    var secretKeyFile: String?

    @Option(help: "Consecutive sign-in failures before lockout. Env: ACCOUNT_SERVER_LOCKOUT_FAILURES. Default: 5")
    var lockoutFailures: Int?

    @Option(help: "Lockout duration in minutes; each failure after a lock runs out locks again, twice as long. Env: ACCOUNT_SERVER_LOCKOUT_MINUTES. Default: 15")
    var lockoutMinutes: Int?

    @Option(help: "Longest lockout an escalation reaches, in minutes. Env: ACCOUNT_SERVER_LOCKOUT_MAXIMUM_MINUTES. Default: 1440")
    var lockoutMaximumMinutes: Int?

    @Option(help: "Hours without a failure (counted from the last failure, or from the end of the last lockout) before the failure count starts again. Env: ACCOUNT_SERVER_LOCKOUT_RESET_HOURS. Default: 12")
    var lockoutResetHours: Int?

    @Option(help: "Session idle timeout in minutes. Env: ACCOUNT_SERVER_SESSION_IDLE_MINUTES. Default: 30")
    var sessionIdleMinutes: Int?

    @Option(help: "Session absolute timeout in hours. Env: ACCOUNT_SERVER_SESSION_ABSOLUTE_HOURS. Default: 12")
    var sessionAbsoluteHours: Int?

    @Option(help: "Sign-in and reset attempts per client per minute. Env: ACCOUNT_SERVER_RATE_LIMIT_PER_MINUTE. Default: 10")
    var rateLimitPerMinute: Int?

    @Option(help: "Reverse proxy (address or CIDR) whose X-Forwarded-For is believed on the web listener; repeatable. Env: ACCOUNT_SERVER_TRUSTED_PROXY (comma-separated)")
    var trustedProxy: [String] = []

    @Option(help: "Forward-auth listener for the vendor's proxy, HOST:PORT. Env: ACCOUNT_SERVER_FORWARD_AUTH_ADDRESS. Default: 127.0.0.1:8446")
    var forwardAuthAddress: String?

    @Flag(inversion: .prefixedNo, help: "Serve the forward-auth listener over TLS with the web certificate (required when it is not on loopback). Env: ACCOUNT_SERVER_FORWARD_AUTH_TLS=1 (--no-… turns it off over the environment and the file)")
    var forwardAuthTls: Bool?

    @Option(help: "Admin listener (health, readiness, metrics, admin API and page), HOST:PORT. Env: ACCOUNT_SERVER_ADMIN_ADDRESS. Default: 127.0.0.1:8445")
    var adminAddress: String?

    @Option(help: "Admin API bearer token file (created 0600 with a random token if absent). Env: ACCOUNT_SERVER_ADMIN_TOKEN_FILE. Default: ./data/admin.token")
    var adminTokenFile: String?

    @Option(help: "The vendor admins' own tokens, by name and role (lines NAME sha256:HEX [view], written by `account-server admin token add`; absent: none); read again when it changes. Env: ACCOUNT_SERVER_ADMIN_TOKENS_FILE. Default: admin-tokens beside --admin-token-file")
    var adminTokensFile: String?

    @Flag(inversion: .prefixedNo, help: "Accept the shared token of --admin-token-file (on by default). --no-shared-admin-token: only the admins' own tokens (--admin-tokens-file) open the admin API and page, and the shared token's file is neither read nor created. Env: ACCOUNT_SERVER_SHARED_ADMIN_TOKEN=0")
    var sharedAdminToken: Bool?

    @Option(help: "Minutes without a request after which an admin page session ends, 1 to 480 (it ends 8 hours after sign-in in any case). Env: ACCOUNT_SERVER_ADMIN_SESSION_IDLE_MINUTES. Default: 30")
    var adminSessionIdleMinutes: Int?

    @Flag(inversion: .prefixedNo, help: "Serve the admin listener over TLS with the web certificate (required when it is not on loopback). Env: ACCOUNT_SERVER_ADMIN_TLS=1 (--no-… turns it off over the environment and the file)")
    var adminTls: Bool?

    @Option(help: "text or json (one JSON object per line on standard error). Env: ACCOUNT_SERVER_LOG_FORMAT. Default: text")
    var logFormat: String?

    @Option(help: "Behind a TLS-terminating proxy: the header carrying the client certificate it verified (nginx $ssl_client_escaped_cert, HAProxy ssl_c_der base64), verified again here. Env: ACCOUNT_SERVER_FHIR_CLIENT_CERTIFICATE_HEADER")
    var fhirClientCertificateHeader: String?

    @Option(help: "Address or CIDR of the TLS-terminating proxy allowed to reach the FHIR listener; repeatable, required with --fhir-client-certificate-header. Env: ACCOUNT_SERVER_FHIR_TRUSTED_PROXY (comma-separated)")
    var fhirTrustedProxy: [String] = []

    @Flag(inversion: .prefixedNo, help: "Behind a proxy: serve the FHIR listener over TLS (server certificate only; required off loopback). Env: ACCOUNT_SERVER_FHIR_PROXY_TLS=1 (--no-… turns it off over the environment and the file)")
    var fhirProxyTls: Bool?

    @Option(help: "Behind a proxy: the CA of the proxy's own client certificate (nginx proxy_ssl_certificate); the FHIR listener then requires it (mutual TLS to the proxy, implies --fhir-proxy-tls); repeatable. Env: ACCOUNT_SERVER_FHIR_PROXY_CLIENT_CA (comma-separated)")
    var fhirProxyClientCa: [String] = []

    @Option(help: "Allowed CN of the proxy's client certificate; repeatable, required with --fhir-proxy-client-ca. Env: ACCOUNT_SERVER_FHIR_PROXY_CLIENT_CN (comma-separated)")
    var fhirProxyClientCn: [String] = []

    @Option(help: "CRL of the proxy's CA; repeatable, optional. Env: ACCOUNT_SERVER_FHIR_PROXY_CLIENT_CRL (comma-separated)")
    var fhirProxyClientCrl: [String] = []

    @Option(help: "The vendor's INT_R01 slot search, http(s)://host[:port][/base]: every FHIR request that is not INT_R02 is relayed there and /metadata merges its CapabilityStatement. Env: ACCOUNT_SERVER_FHIR_UPSTREAM")
    var fhirUpstream: String?

    @Option(help: "CA bundle (PEM) for an https upstream. Env: ACCOUNT_SERVER_FHIR_UPSTREAM_CA. Default: the system trust store")
    var fhirUpstreamCa: String?

    @Option(help: "Certificate (PEM, with its chain) this product presents to an https upstream, which must require it: the upstream believes the identity headers the relay sets. Env: ACCOUNT_SERVER_FHIR_UPSTREAM_CLIENT_CERTIFICATE")
    var fhirUpstreamClientCertificate: String?

    @Option(help: "Private key (PEM) of --fhir-upstream-client-certificate. Env: ACCOUNT_SERVER_FHIR_UPSTREAM_CLIENT_KEY")
    var fhirUpstreamClientKey: String?

    @Option(help: "Seconds to connect to the upstream. Env: ACCOUNT_SERVER_FHIR_UPSTREAM_CONNECT_TIMEOUT. Default: 5")
    var fhirUpstreamConnectTimeout: Double?

    @Option(help: "Seconds to wait for the upstream's response head, and between two body reads. Env: ACCOUNT_SERVER_FHIR_UPSTREAM_TIMEOUT. Default: 30")
    var fhirUpstreamTimeout: Double?

    @Option(help: "Seconds a request may take to arrive whole, from its first byte, on the FHIR, web, admin and forward-auth listeners, 1 to 86400; slower senders are disconnected (the handling time does not count). Env: ACCOUNT_SERVER_REQUEST_TIMEOUT. Default: 60")
    var requestTimeout: Int?

    @Option(help: "Connections one client (an IPv4 address, an IPv6 /64; a /48 gets 16 times as many) may hold open at once on the web and FHIR listeners, 0 to 1000000 (0: no limit); a further one is closed at once. Trusted proxies are not counted. Env: ACCOUNT_SERVER_MAX_CONNECTIONS_PER_CLIENT. Default: 256")
    var maxConnectionsPerClient: Int?

    @Option(help: "An address or CIDR whose connections --max-connections-per-client does not count, on the web and FHIR listeners; repeatable. For a load balancer or NAT in front that hides its clients' addresses (TLS passthrough, SNAT). Env: ACCOUNT_SERVER_CONNECTION_LIMIT_EXEMPT (comma-separated)")
    var connectionLimitExempt: [String] = []

    @Option(help: "Seconds SIGTERM waits for requests in progress to finish; then the remaining connections are cut and the process exits; 1 to 3600. Env: ACCOUNT_SERVER_SHUTDOWN_TIMEOUT. Default: 25")
    var shutdownTimeout: Int?

    @Option(help: "Issuer name shown in authenticator apps. Env: ACCOUNT_SERVER_TOTP_ISSUER. Default: Espace régulateur")
    var totpIssuer: String?

    @Option(help: "https URL of the deployment's privacy notice, linked from every regulator page as « Données personnelles ». Env: ACCOUNT_SERVER_PRIVACY_NOTICE_URL")
    var privacyNoticeUrl: String?

    @Option(help: "https URL of the legal notice (mentions légales), linked from every regulator page. Env: ACCOUNT_SERVER_LEGAL_NOTICE_URL")
    var legalNoticeUrl: String?

    @Option(help: "https URL of the accessibility statement (déclaration d’accessibilité, RGAA), linked from every regulator page. Env: ACCOUNT_SERVER_ACCESSIBILITY_STATEMENT_URL")
    var accessibilityStatementUrl: String?

    @Option(help: "The statement's compliance status, said in the link: full, partial or none (« Accessibilité : totalement / partiellement / non conforme »). Env: ACCOUNT_SERVER_ACCESSIBILITY_COMPLIANCE")
    var accessibilityCompliance: String?

    @Option(help: "Pro Santé Connect (OpenID Connect provider) issuer URL; enables sign-in through it (docs/sso.md). Env: ACCOUNT_SERVER_OIDC_ISSUER")
    var oidcIssuer: String?

    @Option(help: "Client id registered at the provider. Env: ACCOUNT_SERVER_OIDC_CLIENT_ID")
    var oidcClientId: String?

    @Option(help: "File holding the client secret (client_secret_basic). Env: ACCOUNT_SERVER_OIDC_CLIENT_SECRET_FILE")
    var oidcClientSecretFile: String?

    @Option(help: "Private key (PEM, RSA or EC P-256) for private_key_jwt client authentication, instead of a secret. Env: ACCOUNT_SERVER_OIDC_CLIENT_KEY_FILE")
    var oidcClientKeyFile: String?

    @Option(help: "kid of the private_key_jwt key, as registered at the provider. Env: ACCOUNT_SERVER_OIDC_CLIENT_KEY_ID")
    var oidcClientKeyId: String?

    @Option(help: "acr required in ID tokens, also sent as acr_values. Env: ACCOUNT_SERVER_OIDC_ACR. Default: eidas1")
    var oidcAcr: String?

    @Option(help: "Scopes requested. Env: ACCOUNT_SERVER_OIDC_SCOPE. Default: openid scope_all")
    var oidcScope: String?

    @Option(help: "CA bundle (PEM) for the provider's TLS certificate. Env: ACCOUNT_SERVER_OIDC_CA. Default: the system trust store")
    var oidcCa: String?

    @Option(help: "Claim carrying the national id (IDNPS). Env: ACCOUNT_SERVER_OIDC_NATIONAL_ID_CLAIM. Default: SubjectNameID")
    var oidcNationalIdClaim: String?

    @Option(help: "A JSON file of settings, below the command line and the environment in precedence: keys are the flags' words joined by dots, e.g. {\"fhir.address\": \"0.0.0.0:8443\", \"database.pool.size\": 20}. Env: ACCOUNT_SERVER_CONFIG_FILE")
    var configFile: String?

    /// Every key `serve` reads: a file key outside this set is a mistake, refused at start.
    /// `--no-shared-admin-token`: the shared token is accepted unless turned off somewhere.
    static func sharedAdminToken(_ settings: Settings) throws -> Bool {
        try settings.flag("shared.admin.token", default: true)
    }

    static let knownKeys: Set<String> = [
        "log.level",
        "log.format",
        "fhir.address",
        "web.address",
        "forward.auth.address",
        "admin.address",
        "tls.certificate",
        "tls.key",
        "client.ca",
        "client.crl",
        "allowed.client.cn",
        "allowed.client.ou",
        "dev.pki",
        "database",
        "public.base.url",
        "argon2.memory.kib",
        "argon2.iterations",
        "argon2.parallelism",
        "argon2.threads",
        "argon2.queue",
        "crl.poll.seconds",
        "database.pool.size",
        "database.pool.min",
        "web.tls.certificate",
        "web.tls.key",
        "public.url",
        "sas.origin",
        "allowed.return.host",
        "cgu.file",
        "cgu.version",
        "smtp.url",
        "sendmail.command",
        "mail.from",
        "secret.key.file",
        "lockout.failures",
        "lockout.minutes",
        "lockout.maximum.minutes",
        "lockout.reset.hours",
        "session.idle.minutes",
        "session.absolute.hours",
        "rate.limit.per.minute",
        "totp.issuer",
        "privacy.notice.url",
        "legal.notice.url",
        "accessibility.statement.url",
        "accessibility.compliance",
        "trusted.proxy",
        "forward.auth.tls",
        "admin.tls",
        "admin.token.file",
        "admin.tokens.file",
        "shared.admin.token",
        "admin.session.idle.minutes",
        "request.timeout",
        "max.connections.per.client",
        "connection.limit.exempt",
        "shutdown.timeout",
        "fhir.client.certificate.header",
        "fhir.trusted.proxy",
        "fhir.proxy.tls",
        "fhir.proxy.client.ca",
        "fhir.proxy.client.cn",
        "fhir.proxy.client.crl",
        "allow.missing.crl",
        "smtp.allow.cleartext",
        "retention.days",
        "fhir.upstream",
        "fhir.upstream.ca",
        "fhir.upstream.client.certificate",
        "fhir.upstream.client.key",
        "fhir.upstream.connect.timeout",
        "fhir.upstream.timeout",
        "oidc.issuer",
        "oidc.client.id",
        "oidc.client.secret.file",
        "oidc.client.key.file",
        "oidc.client.key.id",
        "oidc.acr",
        "oidc.scope",
        "oidc.ca",
        "oidc.national.id.claim",
    ]

    /// The options given on the command line, for the highest-precedence provider.
    var commandLineValues: [AbsoluteConfigKey: ConfigValue] {
        var values = CommandLineValues()
        values.set("log.level", logLevel)
        values.set("log.format", logFormat)
        values.set("fhir.address", fhirAddress)
        values.set("web.address", webAddress)
        values.set("forward.auth.address", forwardAuthAddress)
        values.set("admin.address", adminAddress)
        values.set("tls.certificate", tlsCertificate)
        values.set("tls.key", tlsKey)
        values.set("client.ca", clientCa)
        values.set("client.crl", clientCrl)
        values.set("allowed.client.cn", allowedClientCn)
        values.set("allowed.client.ou", allowedClientOu)
        values.set("dev.pki", devPki)
        values.set("database", database)
        values.set("public.base.url", publicBaseUrl)
        values.set("argon2.memory.kib", argon2MemoryKib)
        values.set("argon2.iterations", argon2Iterations)
        values.set("argon2.parallelism", argon2Parallelism)
        values.set("argon2.threads", argon2Threads)
        values.set("argon2.queue", argon2Queue)
        values.set("crl.poll.seconds", crlPollSeconds)
        values.set("database.pool.size", databasePoolSize)
        values.set("database.pool.min", databasePoolMin)
        values.set("web.tls.certificate", webTlsCertificate)
        values.set("web.tls.key", webTlsKey)
        values.set("public.url", publicUrl)
        values.set("sas.origin", sasOrigin)
        values.set("allowed.return.host", allowedReturnHost)
        values.set("cgu.file", cguFile)
        values.set("cgu.version", cguVersion)
        values.set("smtp.url", smtpUrl)
        values.set("sendmail.command", sendmailCommand)
        values.set("mail.from", mailFrom)
        values.set("secret.key.file", secretKeyFile)
        values.set("lockout.failures", lockoutFailures)
        values.set("lockout.minutes", lockoutMinutes)
        values.set("lockout.maximum.minutes", lockoutMaximumMinutes)
        values.set("lockout.reset.hours", lockoutResetHours)
        values.set("session.idle.minutes", sessionIdleMinutes)
        values.set("session.absolute.hours", sessionAbsoluteHours)
        values.set("rate.limit.per.minute", rateLimitPerMinute)
        values.set("totp.issuer", totpIssuer)
        values.set("privacy.notice.url", privacyNoticeUrl)
        values.set("legal.notice.url", legalNoticeUrl)
        values.set("accessibility.statement.url", accessibilityStatementUrl)
        values.set("accessibility.compliance", accessibilityCompliance)
        values.set("trusted.proxy", trustedProxy)
        values.set("forward.auth.tls", forwardAuthTls)
        values.set("admin.tls", adminTls)
        values.set("admin.token.file", adminTokenFile)
        values.set("admin.tokens.file", adminTokensFile)
        values.set("shared.admin.token", sharedAdminToken)
        values.set("admin.session.idle.minutes", adminSessionIdleMinutes)
        values.set("request.timeout", requestTimeout)
        values.set("max.connections.per.client", maxConnectionsPerClient)
        values.set("connection.limit.exempt", connectionLimitExempt)
        values.set("shutdown.timeout", shutdownTimeout)
        values.set("fhir.client.certificate.header", fhirClientCertificateHeader)
        values.set("fhir.trusted.proxy", fhirTrustedProxy)
        values.set("fhir.proxy.tls", fhirProxyTls)
        values.set("fhir.proxy.client.ca", fhirProxyClientCa)
        values.set("fhir.proxy.client.cn", fhirProxyClientCn)
        values.set("fhir.proxy.client.crl", fhirProxyClientCrl)
        values.set("allow.missing.crl", allowMissingCrl)
        values.set("smtp.allow.cleartext", smtpAllowCleartext)
        values.set("retention.days", retentionDays)
        values.set("fhir.upstream", fhirUpstream)
        values.set("fhir.upstream.ca", fhirUpstreamCa)
        values.set("fhir.upstream.client.certificate", fhirUpstreamClientCertificate)
        values.set("fhir.upstream.client.key", fhirUpstreamClientKey)
        values.set("fhir.upstream.connect.timeout", fhirUpstreamConnectTimeout)
        values.set("fhir.upstream.timeout", fhirUpstreamTimeout)
        values.set("oidc.issuer", oidcIssuer)
        values.set("oidc.client.id", oidcClientId)
        values.set("oidc.client.secret.file", oidcClientSecretFile)
        values.set("oidc.client.key.file", oidcClientKeyFile)
        values.set("oidc.client.key.id", oidcClientKeyId)
        values.set("oidc.acr", oidcAcr)
        values.set("oidc.scope", oidcScope)
        values.set("oidc.ca", oidcCa)
        values.set("oidc.national.id.claim", oidcNationalIdClaim)
        return values.values
    }

    /// A duration setting counted in `unit` seconds (minutes, hours): refused outside
    /// 1…`maximum` (by default a year's worth), rather than a huge value overflowing into a
    /// trap or 0 meaning "always expired".
    static func durationSeconds(_ settings: Settings, _ key: String, default value: Int, unit: Int, maximum: Int? = nil) throws -> Int {
        let count = try settings.int(key) ?? value
        let maximum = maximum ?? 366 * 24 * 3600 / unit
        guard (1...maximum).contains(count) else {
            let flag = key.replacingOccurrences(of: ".", with: "-")
            throw ValidationError("--\(flag) (ACCOUNT_SERVER_\(flag.uppercased().replacingOccurrences(of: "-", with: "_"))) must be between 1 and \(maximum), got \(count)")
        }
        return count * unit
    }

    func run() async throws {
        // SIGHUP's default action ends the process, and the reload service traps it only once
        // it runs, concurrently with the listeners: a reload asked for during start-up (a
        // certificate renewal hook, `systemctl reload` just after start) is ignored instead of
        // killing the server. The reload service then takes the signal over.
        signal(SIGHUP, SIG_IGN)
        // A log reader that goes away (a pipe to a shipper that died) makes `write` fail with
        // EPIPE, and the lines lost are counted (`account_server_log_lines_dropped_total`);
        // SIGPIPE's default action would instead end the server. SwiftNIO ignores it too, but
        // only once it opens its first socket, after the migrations have logged.
        signal(SIGPIPE, SIG_IGN)
        let settings = try await Settings(commandLine: commandLineValues, environment: ProcessInfo.processInfo.environment,
                                          file: configFile ?? ProcessInfo.processInfo.environment["ACCOUNT_SERVER_CONFIG_FILE"].flatMap { $0.isEmpty ? nil : $0 },
                                          knownKeys: Self.knownKeys)
        let levelText = try settings.string("log.level") ?? "info"
        guard let level = Logger.Level(rawValue: levelText) else { throw ValidationError("unknown log level \(levelText)") }
        let format = try settings.string("log.format") ?? "text"
        guard let lineFormat = LogLineHandler.Format(rawValue: format) else {
            throw ValidationError("--log-format must be text or json, got \(format)")
        }
        var logger = Logger(label: "account-server", factory: { LogLineHandler(label: $0, format: lineFormat) })
        logger.logLevel = level
        logger.info("settings read", metadata: ["sources": "\(settings.sources.joined(separator: ", "))"])

        let (host, port) = try Self.hostAndPort(try settings.string("fhir.address") ?? "127.0.0.1:8443", flag: "--fhir-address")
        let (webHost, webPort) = try Self.hostAndPort(try settings.string("web.address") ?? "127.0.0.1:8444", flag: "--web-address")
        let (forwardHost, forwardPort) = try Self.hostAndPort(try settings.string("forward.auth.address") ?? "127.0.0.1:8446",
                                                              flag: "--forward-auth-address")
        let (adminHost, adminPort) = try Self.hostAndPort(try settings.string("admin.address") ?? "127.0.0.1:8445", flag: "--admin-address")

        var certificate = try settings.string("tls.certificate")
        var key = try settings.string("tls.key")
        var cas = try settings.list("client.ca")
        var crls = try settings.list("client.crl")
        var cns = try settings.list("allowed.client.cn")
        var ous = try settings.list("allowed.client.ou")

        var developmentPKI: DevelopmentPKI?
        if certificate == nil && key == nil && cas.isEmpty {
            // Its CA key lies beside it, so anyone who can read the folder can mint a "SAS":
            // a server that faces a network (an environment file that did not load, say) does
            // not fall back on it.
            guard isLoopback(host) else {
                throw CommandFailure("no TLS flag is given, and the development PKI serves a loopback --fhir-address only (got \(host)): give --tls-certificate, --tls-key, --client-ca, --client-crl, --allowed-client-cn and --allowed-client-ou (did the environment file load?)")
            }
            let pki = DevelopmentPKI(directory: try settings.string("dev.pki") ?? "./data/pki")
            if try pki.ensure() { logger.notice("development PKI generated", metadata: ["directory": "\(pki.directory)"]) }
            logger.warning("no TLS flag given: using the DEVELOPMENT PKI (not for production)", metadata: ["directory": "\(pki.directory)"])
            certificate = pki.serverCertificatePath
            key = pki.serverKeyPath
            cas = [pki.caPath]
            if crls.isEmpty { crls = [pki.crlPath] }
            if cns.isEmpty { cns = [DevelopmentPKI.clientCommonName] }
            if ous.isEmpty { ous = [DevelopmentPKI.clientOrganizationalUnit] }
            developmentPKI = pki
        }
        guard let certificate, let key else {
            throw ValidationError("--tls-certificate and --tls-key are both required (or give no TLS flag at all for the development PKI)")
        }

        let defaults = Argon2Parameters.owaspMinimum
        var fhir = FHIRListenerConfiguration(host: host, port: port, tlsCertificatePath: certificate, tlsKeyPath: key,
                                             clientCAPaths: cas, clientCRLPaths: crls,
                                             allowedClientCommonNames: cns, allowedClientOrganizationalUnits: ous)
        fhir.publicBaseURL = try settings.string("public.base.url")
        // 0 would poll the CRL files in a busy loop.
        fhir.crlPollInterval = .seconds(try Self.durationSeconds(settings, "crl.poll.seconds", default: 5, unit: 1, maximum: 86400))
        var baseConfiguration = ServerConfiguration(
            database: try StorageLocation.argument(try settings.string("database") ?? "./data/account-server.sqlite"),
            argon2: Argon2Parameters(
                memoryKiB: try settings.uint32("argon2.memory.kib") ?? defaults.memoryKiB,
                iterations: try settings.uint32("argon2.iterations") ?? defaults.iterations,
                parallelism: try settings.uint32("argon2.parallelism") ?? defaults.parallelism
            ),
            argon2Threads: try settings.int("argon2.threads") ?? max(1, ProcessInfo.processInfo.activeProcessorCount),
            logLevel: level,
            fhir: fhir
        )
        baseConfiguration.databasePoolSize = try settings.int("database.pool.size") ?? 10
        baseConfiguration.argon2QueueLimit = try settings.int("argon2.queue") ?? 64
        guard baseConfiguration.argon2QueueLimit >= 1 else { throw ValidationError("--argon2-queue must be at least 1") }
        guard baseConfiguration.databasePoolSize >= 1 else { throw ValidationError("--database-pool-size must be at least 1") }
        // 0 by default: connections open on demand and close after a minute idle.
        let poolMinimum = try settings.int("database.pool.min") ?? 0
        guard (0...baseConfiguration.databasePoolSize).contains(poolMinimum) else {
            throw ValidationError("--database-pool-min must be between 0 and --database-pool-size (\(baseConfiguration.databasePoolSize))")
        }
        baseConfiguration.databasePoolMinimum = poolMinimum
        var resolved = baseConfiguration
        let webCertificate = try settings.string("web.tls.certificate")
        let webKey = try settings.string("web.tls.key")
        guard (webCertificate == nil) == (webKey == nil) else {
            // Half a pair would otherwise be dropped, and the web listener would present the
            // FHIR certificate without a word.
            throw ValidationError("--web-tls-certificate and --web-tls-key go together: give both, or neither to use the FHIR certificate")
        }
        resolved.web = WebListenerConfiguration(host: webHost, port: webPort,
                                                tlsCertificatePath: webCertificate,
                                                tlsKeyPath: webKey,
                                                publicURL: try settings.string("public.url"),
                                                trustedProxies: try settings.list("trusted.proxy"))
        resolved.forwardAuth = ForwardAuthListenerConfiguration(host: forwardHost, port: forwardPort, tls: try settings.flag("forward.auth.tls"))
        // At most the admin session's absolute 8 hours.
        let adminIdle = try Self.durationSeconds(settings, "admin.session.idle.minutes", default: 30, unit: 60, maximum: 480)
        let adminTokenPath = try settings.string("admin.token.file") ?? "./data/admin.token"
        resolved.admin = AdminListenerConfiguration(host: adminHost, port: adminPort, tls: try settings.flag("admin.tls"),
                                                    tokenPath: adminTokenPath,
                                                    namedTokensPath: try settings.string("admin.tokens.file") ?? AdminTokenFile.defaultPath(besides: adminTokenPath),
                                                    sharedToken: try Self.sharedAdminToken(settings),
                                                    sessionIdleTimeout: .seconds(adminIdle))
        let origins = try settings.list("sas.origin")
        resolved.acceptedOrigins = origins.isEmpty ? ["sas"] : origins
        resolved.allowedReturnHosts = try settings.list("allowed.return.host")
        if let path = try settings.string("cgu.file") {
            resolved.cguText = try String(contentsOfFile: path, encoding: .utf8)
        } else {
            logger.warning("no --cgu-file: the DEVELOPMENT terms of use are shown (not for production)")
        }
        resolved.cguVersion = try settings.string("cgu.version")
        resolved.smtpURL = try settings.string("smtp.url")
        resolved.sendmailCommand = try settings.string("sendmail.command").map { $0.split(separator: " ").map(String.init) }
        resolved.mailFrom = try settings.string("mail.from")
        resolved.secretKeyPath = try settings.string("secret.key.file") ?? "./data/secret.key"
        func seconds(_ key: String, default value: Int, unit: Int) throws -> Int {
            try Self.durationSeconds(settings, key, default: value, unit: unit)
        }
        resolved.lockout = LockoutPolicy(maximumFailures: try settings.int("lockout.failures") ?? 5,
                                    coolingPeriod: .seconds(try seconds("lockout.minutes", default: 15, unit: 60)),
                                    maximumWait: .seconds(try seconds("lockout.maximum.minutes", default: 1440, unit: 60)),
                                    failureResetTime: .seconds(try seconds("lockout.reset.hours", default: 12, unit: 3600)))
        resolved.sessionIdleTimeout = TimeInterval(try seconds("session.idle.minutes", default: 30, unit: 60))
        resolved.sessionAbsoluteTimeout = TimeInterval(try seconds("session.absolute.hours", default: 12, unit: 3600))
        resolved.rateLimitPerMinute = try settings.int("rate.limit.per.minute") ?? 10
        resolved.totpIssuer = try settings.string("totp.issuer") ?? "Espace régulateur"
        resolved.footer = try PageFooter(privacyNotice: try settings.string("privacy.notice.url"),
                                         legalNotice: try settings.string("legal.notice.url"),
                                         accessibilityStatement: try settings.string("accessibility.statement.url"),
                                         accessibilityCompliance: try settings.string("accessibility.compliance"))
        if resolved.footer.privacyNotice == nil {
            // Said, not refused (decision for the vendor): the pages collect personal data
            // (GDPR article 13 wants the notice reachable there), but a development server
            // needs none.
            logger.warning("no --privacy-notice-url: the regulator pages link no privacy notice (docs/personal-data.md)")
        }
        // Bounded above too: a value past Int64's nanoseconds would trap at the first connection.
        let requestSeconds = try Self.durationSeconds(settings, "request.timeout", default: 60, unit: 1, maximum: 86400)
        resolved.requestReceiveTimeout = .seconds(requestSeconds)
        let perClient = try settings.int("max.connections.per.client") ?? 256
        guard (0...1_000_000).contains(perClient) else {
            throw ValidationError("--max-connections-per-client must be 0 (no limit) to 1000000, got \(perClient)")
        }
        resolved.maxConnectionsPerClient = perClient
        resolved.connectionLimitExempt = try settings.list("connection.limit.exempt")
        let shutdownSeconds = try Self.durationSeconds(settings, "shutdown.timeout", default: 25, unit: 1, maximum: 3600)
        resolved.fhir.clientCertificateHeader = try settings.string("fhir.client.certificate.header")
        resolved.fhir.trustedProxies = try settings.list("fhir.trusted.proxy")
        resolved.fhir.proxyTLS = try settings.flag("fhir.proxy.tls")
        resolved.fhir.proxyClientCAPaths = try settings.list("fhir.proxy.client.ca")
        resolved.fhir.proxyClientNames = try settings.list("fhir.proxy.client.cn")
        resolved.fhir.proxyClientCRLPaths = try settings.list("fhir.proxy.client.crl")
        if !resolved.fhir.proxyClientCAPaths.isEmpty { resolved.fhir.proxyTLS = true }
        resolved.fhir.allowMissingCRL = try settings.flag("allow.missing.crl")
        resolved.smtpAllowCleartext = try settings.flag("smtp.allow.cleartext")
        let retentionDays = try settings.int("retention.days") ?? 30
        guard retentionDays >= 1 else { throw ValidationError("--retention-days must be at least 1") }
        resolved.retention = TimeInterval(retentionDays) * 86400
        if let url = try settings.string("fhir.upstream") {
            var upstream = UpstreamConfiguration(url: url)
            upstream.caPath = try settings.string("fhir.upstream.ca")
            upstream.clientCertificatePath = try settings.string("fhir.upstream.client.certificate")
            upstream.clientKeyPath = try settings.string("fhir.upstream.client.key")
            guard (upstream.clientCertificatePath == nil) == (upstream.clientKeyPath == nil) else {
                throw ValidationError("--fhir-upstream-client-certificate and --fhir-upstream-client-key go together")
            }
            if upstream.clientCertificatePath != nil, !url.lowercased().hasPrefix("https://") {
                throw ValidationError("--fhir-upstream-client-certificate needs an https --fhir-upstream (over http it would never be presented)")
            }
            // Finite and at most an hour: `inf` or 1e20 would trap converting to milliseconds.
            if let seconds = try settings.double("fhir.upstream.connect.timeout") {
                guard seconds >= 0.001 && seconds <= 3600 else {
                    throw ValidationError("--fhir-upstream-connect-timeout must be between 0.001 and 3600 seconds, got \(seconds)")
                }
                upstream.connectTimeout = .milliseconds(Int64(seconds * 1000))
            }
            if let seconds = try settings.double("fhir.upstream.timeout") {
                guard seconds >= 0.001 && seconds <= 3600 else {
                    throw ValidationError("--fhir-upstream-timeout must be between 0.001 and 3600 seconds, got \(seconds)")
                }
                upstream.responseTimeout = .milliseconds(Int64(seconds * 1000))
            }
            resolved.fhir.upstream = upstream
        }
        if let issuer = try settings.string("oidc.issuer") {
            guard let clientID = try settings.string("oidc.client.id") else {
                throw ValidationError("--oidc-issuer needs --oidc-client-id")
            }
            var sso = SSOConfiguration(issuer: issuer, clientID: clientID)
            sso.clientSecretPath = try settings.string("oidc.client.secret.file")
            sso.clientKeyPath = try settings.string("oidc.client.key.file")
            sso.clientKeyID = try settings.string("oidc.client.key.id")
            guard (sso.clientSecretPath == nil) != (sso.clientKeyPath == nil) else {
                throw ValidationError("--oidc-issuer needs exactly one of --oidc-client-secret-file (client_secret_basic) and --oidc-client-key-file (private_key_jwt)")
            }
            sso.acr = try settings.string("oidc.acr") ?? "eidas1"
            sso.scope = try settings.string("oidc.scope") ?? "openid scope_all"
            sso.caPath = try settings.string("oidc.ca")
            sso.nationalIDClaim = try settings.string("oidc.national.id.claim") ?? "SubjectNameID"
            resolved.sso = sso
        }
        guard resolved.lockout.maximumFailures >= 1, resolved.lockout.coolingPeriod > .zero, resolved.lockout.failureResetTime > .zero,
              resolved.rateLimitPerMinute >= 1, resolved.sessionIdleTimeout > 0, resolved.sessionAbsoluteTimeout > 0 else {
            throw ValidationError("lockout, rate limit and session settings must be positive")
        }
        let configuration = resolved

        guard configuration.argon2.memoryKiB >= 8 * configuration.argon2.parallelism, configuration.argon2.iterations >= 1, configuration.argon2.parallelism >= 1 else {
            throw ValidationError("argon2 parameters out of range (memory ≥ 8×parallelism KiB, iterations ≥ 1, parallelism ≥ 1)")
        }

        let listeningLogger = logger
        let listeningHost = host
        let pkiForCurl = developmentPKI
        let listeningWebHost = webHost
        let app = try await buildApplication(configuration, logger: logger, onFHIRListening: { boundPort in
            let logger = listeningLogger, host = listeningHost, developmentPKI = pkiForCurl
            logger.notice("FHIR endpoint listening", metadata: [
                "address": "\(host):\(boundPort)",
                "client_certificates": "\(configuration.fhir.clientCertificateHeader.map { "forwarded in \($0) by \(configuration.fhir.trustedProxies.joined(separator: ","))" } ?? "mutual TLS")",
                "upstream": "\(configuration.fhir.upstream?.url ?? "none")",
            ])
            if let developmentPKI, configuration.fhir.clientCertificateHeader == nil {
                FileHandle.standardOutput.write(Data(Self.curlExample(pki: developmentPKI, port: boundPort).utf8))
            }
        }, onWebListening: { boundPort in
            listeningLogger.notice("web sign-in listening", metadata: ["address": "\(listeningWebHost):\(boundPort)"])
        }, onAdminListening: { boundPort in
            listeningLogger.notice("admin listener listening", metadata: ["address": "\(adminHost):\(boundPort)"])
        }, onForwardAuthListening: { boundPort in
            listeningLogger.notice("forward-auth listening", metadata: ["address": "\(forwardHost):\(boundPort)"])
        })
        // Graceful shutdown drains requests in progress, but no longer than the timeout: an
        // orchestrator's SIGKILL (or a stuck upstream) must not decide when a process ends.
        var group = ServiceGroupConfiguration(services: [.init(service: app)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        group.maximumGracefulShutdownDuration = .seconds(shutdownSeconds)
        // Cancelled work gets 5 s more; past that swift-service-lifecycle ends the process.
        group.maximumCancellationDuration = .seconds(5)
        do {
            try await ServiceGroup(configuration: group).run()
        } catch let error as IOError where error.errnoCode == EADDRINUSE {
            // NIO's message names neither the address nor the listener.
            let listeners = [("FHIR", configuration.fhir.host, configuration.fhir.port), ("web", configuration.web.host, configuration.web.port),
                             ("admin", configuration.admin.host, configuration.admin.port),
                             ("forward-auth", configuration.forwardAuth.host, configuration.forwardAuth.port)]
            throw ConfigurationError(description: "a listening address is already in use by another process; this server listens on "
                                     + listeners.map { "\($0.0) \($0.1):\($0.2)" }.joined(separator: ", "))
        }
    }

    static func hostAndPort(_ address: String, flag: String) throws -> (String, Int) {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]), (0...65535).contains(port) else {
            throw ValidationError("\(flag) must be HOST:PORT, got \(address)")
        }
        return (String(address[..<colon]).withoutIPv6Brackets, port)
    }

    /// A curl that creates a regulator through the development PKI, with a fresh technical id.
    static func curlExample(pki: DevelopmentPKI, port: Int) -> String {
        let uuid = UUID().uuidString.lowercased()
        let body = """
        {"resourceType":"Practitioner","meta":{"source":"urn:oid:1.2.250.1.213.3.6","profile":["\(FHIRSystems.practitionerRegulProfile)"]},\
        "identifier":[{"type":{"coding":[{"system":"\(FHIRSystems.identifierType)","code":"INTRN"}]},"system":"\(FHIRSystems.sasPlatform)","value":"\(uuid)"}],\
        "active":true,"name":[{"family":"Dupont","given":["Camille"]}],"telecom":[{"system":"email","value":"camille.dupont.\(uuid.prefix(8))@example.fr"}]}
        """
        return """

        ── Create a regulator over mTLS (development PKI) ──
        curl --cacert \(pki.caPath) --cert \(pki.clientCertificatePath) --key \(pki.clientKeyPath) \\
          -H 'Content-Type: application/fhir+json' -X POST https://localhost:\(port)/Practitioner \\
          --data '\(body)'

        """
    }
}
