import Accounts
import ArgumentParser
import Foundation
import Storage
import Hummingbird
import Logging
import ServiceLifecycle

/// `account-server serve`: runs the FHIR mutual-TLS listener. With no TLS flag at all it
/// generates and uses a development PKI under `./data/pki` and prints a ready-to-paste curl.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "serve", abstract: "Run the server (see docs/configuration.md).")

    @Option(help: "SQLite database file, or a postgres:// URL (several instances share one PostgreSQL). Env: ACCOUNT_SERVER_DATABASE. Default: ./data/account-server.sqlite")
    var database: String?

    @Option(help: "PostgreSQL connections (each with a thread running its transactions). Env: ACCOUNT_SERVER_DATABASE_POOL_SIZE. Default: 10")
    var databasePoolSize: Int?

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

    @Option(help: "Allowed client certificate OU; repeatable; none means OU is not checked. Env: ACCOUNT_SERVER_ALLOWED_CLIENT_OU (comma-separated)")
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

    @Flag(help: "Accept client certificates whose CA has no CRL loaded (revocation NOT checked for them; logged at start, shown by /readyz). Without it the server refuses to start, and refuses such certificates. Env: ACCOUNT_SERVER_ALLOW_MISSING_CRL")
    var allowMissingCrl = false

    @Option(help: "Days ended sessions, dead password reset links and mail outbox rows are kept before they are purged (the audit trail is never purged). Env: ACCOUNT_SERVER_RETENTION_DAYS. Default: 30")
    var retentionDays: Int?

    @Option(help: "Seconds between CRL file change checks. Env: ACCOUNT_SERVER_CRL_POLL_SECONDS. Default: 5")
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

    @Option(help: "Host (or host:port) the browser may return to after sign-in; repeatable. Env: ACCOUNT_SERVER_ALLOWED_RETURN_HOST. Default: the public URL's host")
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

    @Option(help: "Lockout duration in minutes. Env: ACCOUNT_SERVER_LOCKOUT_MINUTES. Default: 15")
    var lockoutMinutes: Int?

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

    @Flag(help: "Serve the forward-auth listener over TLS with the web certificate (required when it is not on loopback). Env: ACCOUNT_SERVER_FORWARD_AUTH_TLS=1")
    var forwardAuthTls = false

    @Option(help: "Admin listener (health, readiness, metrics, admin API and page), HOST:PORT. Env: ACCOUNT_SERVER_ADMIN_ADDRESS. Default: 127.0.0.1:8445")
    var adminAddress: String?

    @Option(help: "Admin API bearer token file (created 0600 with a random token if absent). Env: ACCOUNT_SERVER_ADMIN_TOKEN_FILE. Default: ./data/admin.token")
    var adminTokenFile: String?

    @Flag(help: "Serve the admin listener over TLS with the web certificate (required when it is not on loopback). Env: ACCOUNT_SERVER_ADMIN_TLS=1")
    var adminTls = false

    @Option(help: "text or json (one JSON object per line on standard error). Env: ACCOUNT_SERVER_LOG_FORMAT. Default: text")
    var logFormat: String?

    @Option(help: "Behind a TLS-terminating proxy: the header carrying the client certificate it verified (nginx $ssl_client_escaped_cert, HAProxy ssl_c_der base64), verified again here. Env: ACCOUNT_SERVER_FHIR_CLIENT_CERTIFICATE_HEADER")
    var fhirClientCertificateHeader: String?

    @Option(help: "Address or CIDR of the TLS-terminating proxy allowed to reach the FHIR listener; repeatable, required with --fhir-client-certificate-header. Env: ACCOUNT_SERVER_FHIR_TRUSTED_PROXY (comma-separated)")
    var fhirTrustedProxy: [String] = []

    @Flag(help: "Behind a proxy: serve the FHIR listener over TLS (server certificate only; required off loopback). Env: ACCOUNT_SERVER_FHIR_PROXY_TLS=1")
    var fhirProxyTls = false

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

    @Option(help: "Seconds to connect to the upstream. Env: ACCOUNT_SERVER_FHIR_UPSTREAM_CONNECT_TIMEOUT. Default: 5")
    var fhirUpstreamConnectTimeout: Double?

    @Option(help: "Seconds to wait for the upstream's response head, and between two body reads. Env: ACCOUNT_SERVER_FHIR_UPSTREAM_TIMEOUT. Default: 30")
    var fhirUpstreamTimeout: Double?

    @Option(help: "Seconds a request may take to arrive whole, from its first byte, on the FHIR and web listeners; slower senders are disconnected (the handling time does not count). Env: ACCOUNT_SERVER_REQUEST_TIMEOUT. Default: 60")
    var requestTimeout: Int?

    @Option(help: "Seconds SIGTERM waits for requests in progress to finish; then the remaining connections are cut and the process exits. Env: ACCOUNT_SERVER_SHUTDOWN_TIMEOUT. Default: 30")
    var shutdownTimeout: Int?

    @Option(help: "Issuer name shown in authenticator apps. Env: ACCOUNT_SERVER_TOTP_ISSUER. Default: Espace régulateur")
    var totpIssuer: String?

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

    func run() async throws {
        typealias Env = EnvironmentFallback
        let levelText = Env.value(logLevel, "ACCOUNT_SERVER_LOG_LEVEL") ?? "info"
        guard let level = Logger.Level(rawValue: levelText) else { throw ValidationError("unknown log level \(levelText)") }
        let format = Env.value(logFormat, "ACCOUNT_SERVER_LOG_FORMAT") ?? "text"
        guard let lineFormat = LogLineHandler.Format(rawValue: format) else {
            throw ValidationError("--log-format must be text or json, got \(format)")
        }
        var logger = Logger(label: "account-server", factory: { LogLineHandler(label: $0, format: lineFormat) })
        logger.logLevel = level

        let (host, port) = try Self.hostAndPort(Env.value(fhirAddress, "ACCOUNT_SERVER_FHIR_ADDRESS") ?? "127.0.0.1:8443", flag: "--fhir-address")
        let (webHost, webPort) = try Self.hostAndPort(Env.value(webAddress, "ACCOUNT_SERVER_WEB_ADDRESS") ?? "127.0.0.1:8444", flag: "--web-address")
        let (forwardHost, forwardPort) = try Self.hostAndPort(Env.value(forwardAuthAddress, "ACCOUNT_SERVER_FORWARD_AUTH_ADDRESS") ?? "127.0.0.1:8446",
                                                              flag: "--forward-auth-address")
        let (adminHost, adminPort) = try Self.hostAndPort(Env.value(adminAddress, "ACCOUNT_SERVER_ADMIN_ADDRESS") ?? "127.0.0.1:8445", flag: "--admin-address")

        var certificate = Env.value(tlsCertificate, "ACCOUNT_SERVER_TLS_CERTIFICATE")
        var key = Env.value(tlsKey, "ACCOUNT_SERVER_TLS_KEY")
        var cas = Env.list(clientCa, "ACCOUNT_SERVER_CLIENT_CA")
        var crls = Env.list(clientCrl, "ACCOUNT_SERVER_CLIENT_CRL")
        var cns = Env.list(allowedClientCn, "ACCOUNT_SERVER_ALLOWED_CLIENT_CN")
        var ous = Env.list(allowedClientOu, "ACCOUNT_SERVER_ALLOWED_CLIENT_OU")

        var developmentPKI: DevelopmentPKI?
        if certificate == nil && key == nil && cas.isEmpty {
            let pki = DevelopmentPKI(directory: Env.value(devPki, "ACCOUNT_SERVER_DEV_PKI") ?? "./data/pki")
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
        var baseConfiguration = ServerConfiguration(
            database: try StorageLocation.argument(Env.value(database, "ACCOUNT_SERVER_DATABASE") ?? "./data/account-server.sqlite"),
            fhirHost: host, fhirPort: port,
            tlsCertificatePath: certificate, tlsKeyPath: key,
            clientCAPaths: cas, clientCRLPaths: crls,
            allowedClientCommonNames: cns, allowedClientOrganizationalUnits: ous,
            publicBaseURL: Env.value(publicBaseUrl, "ACCOUNT_SERVER_PUBLIC_BASE_URL"),
            argon2: Argon2Parameters(
                memoryKiB: try Self.number(argon2MemoryKib, "ACCOUNT_SERVER_ARGON2_MEMORY_KIB") ?? defaults.memoryKiB,
                iterations: try Self.number(argon2Iterations, "ACCOUNT_SERVER_ARGON2_ITERATIONS") ?? defaults.iterations,
                parallelism: try Self.number(argon2Parallelism, "ACCOUNT_SERVER_ARGON2_PARALLELISM") ?? defaults.parallelism
            ),
            argon2Threads: try Self.number(argon2Threads, "ACCOUNT_SERVER_ARGON2_THREADS") ?? max(1, ProcessInfo.processInfo.activeProcessorCount),
            crlPollInterval: .seconds(try Self.number(crlPollSeconds, "ACCOUNT_SERVER_CRL_POLL_SECONDS") ?? 5),
            logLevel: level
        )
        baseConfiguration.databasePoolSize = try Self.number(databasePoolSize, "ACCOUNT_SERVER_DATABASE_POOL_SIZE") ?? 10
        guard baseConfiguration.databasePoolSize >= 1 else { throw ValidationError("--database-pool-size must be at least 1") }
        var web = baseConfiguration
        web.webHost = webHost
        web.webPort = webPort
        web.webTLSCertificatePath = Env.value(webTlsCertificate, "ACCOUNT_SERVER_WEB_TLS_CERTIFICATE")
        web.webTLSKeyPath = Env.value(webTlsKey, "ACCOUNT_SERVER_WEB_TLS_KEY")
        web.publicURL = Env.value(publicUrl, "ACCOUNT_SERVER_PUBLIC_URL")
        let origins = Env.list(sasOrigin, "ACCOUNT_SERVER_SAS_ORIGIN")
        web.acceptedOrigins = origins.isEmpty ? ["sas"] : origins
        web.allowedReturnHosts = Env.list(allowedReturnHost, "ACCOUNT_SERVER_ALLOWED_RETURN_HOST")
        if let path = Env.value(cguFile, "ACCOUNT_SERVER_CGU_FILE") {
            web.cguText = try String(contentsOfFile: path, encoding: .utf8)
        } else {
            logger.warning("no --cgu-file: the DEVELOPMENT terms of use are shown (not for production)")
        }
        web.cguVersion = Env.value(cguVersion, "ACCOUNT_SERVER_CGU_VERSION")
        web.smtpURL = Env.value(smtpUrl, "ACCOUNT_SERVER_SMTP_URL")
        web.sendmailCommand = Env.value(sendmailCommand, "ACCOUNT_SERVER_SENDMAIL_COMMAND").map { $0.split(separator: " ").map(String.init) }
        web.mailFrom = Env.value(mailFrom, "ACCOUNT_SERVER_MAIL_FROM")
        web.secretKeyPath = Env.value(secretKeyFile, "ACCOUNT_SERVER_SECRET_KEY_FILE") ?? "./data/secret.key"
        web.lockout = LockoutPolicy(maximumFailures: try Self.number(lockoutFailures, "ACCOUNT_SERVER_LOCKOUT_FAILURES") ?? 5,
                                    coolingPeriod: .seconds(60 * (try Self.number(lockoutMinutes, "ACCOUNT_SERVER_LOCKOUT_MINUTES") ?? 15)))
        web.sessionIdleTimeout = TimeInterval(60 * (try Self.number(sessionIdleMinutes, "ACCOUNT_SERVER_SESSION_IDLE_MINUTES") ?? 30))
        web.sessionAbsoluteTimeout = TimeInterval(3600 * (try Self.number(sessionAbsoluteHours, "ACCOUNT_SERVER_SESSION_ABSOLUTE_HOURS") ?? 12))
        web.rateLimitPerMinute = try Self.number(rateLimitPerMinute, "ACCOUNT_SERVER_RATE_LIMIT_PER_MINUTE") ?? 10
        web.totpIssuer = Env.value(totpIssuer, "ACCOUNT_SERVER_TOTP_ISSUER") ?? "Espace régulateur"
        web.trustedProxies = Env.list(trustedProxy, "ACCOUNT_SERVER_TRUSTED_PROXY")
        web.forwardAuthHost = forwardHost
        web.forwardAuthPort = forwardPort
        web.forwardAuthTLS = Env.flag(forwardAuthTls, "ACCOUNT_SERVER_FORWARD_AUTH_TLS")
        web.adminHost = adminHost
        web.adminPort = adminPort
        web.adminTLS = Env.flag(adminTls, "ACCOUNT_SERVER_ADMIN_TLS")
        web.adminTokenPath = Env.value(adminTokenFile, "ACCOUNT_SERVER_ADMIN_TOKEN_FILE") ?? "./data/admin.token"
        let requestSeconds = try Self.number(requestTimeout, "ACCOUNT_SERVER_REQUEST_TIMEOUT") ?? 60
        guard requestSeconds >= 1 else { throw ValidationError("--request-timeout must be at least 1 second") }
        web.requestReceiveTimeout = .seconds(requestSeconds)
        let shutdownSeconds = try Self.number(shutdownTimeout, "ACCOUNT_SERVER_SHUTDOWN_TIMEOUT") ?? 30
        guard shutdownSeconds >= 1 else { throw ValidationError("--shutdown-timeout must be at least 1 second") }
        web.fhirClientCertificateHeader = Env.value(fhirClientCertificateHeader, "ACCOUNT_SERVER_FHIR_CLIENT_CERTIFICATE_HEADER")
        web.fhirTrustedProxies = Env.list(fhirTrustedProxy, "ACCOUNT_SERVER_FHIR_TRUSTED_PROXY")
        web.fhirProxyTLS = Env.flag(fhirProxyTls, "ACCOUNT_SERVER_FHIR_PROXY_TLS")
        web.fhirProxyClientCAPaths = Env.list(fhirProxyClientCa, "ACCOUNT_SERVER_FHIR_PROXY_CLIENT_CA")
        web.fhirProxyClientNames = Env.list(fhirProxyClientCn, "ACCOUNT_SERVER_FHIR_PROXY_CLIENT_CN")
        web.fhirProxyClientCRLPaths = Env.list(fhirProxyClientCrl, "ACCOUNT_SERVER_FHIR_PROXY_CLIENT_CRL")
        if !web.fhirProxyClientCAPaths.isEmpty { web.fhirProxyTLS = true }
        web.allowMissingCRL = Env.flag(allowMissingCrl, "ACCOUNT_SERVER_ALLOW_MISSING_CRL")
        let retentionDays = try Self.number(retentionDays, "ACCOUNT_SERVER_RETENTION_DAYS") ?? 30
        guard retentionDays >= 1 else { throw ValidationError("--retention-days must be at least 1") }
        web.retention = TimeInterval(retentionDays) * 86400
        if let url = Env.value(fhirUpstream, "ACCOUNT_SERVER_FHIR_UPSTREAM") {
            var upstream = UpstreamConfiguration(url: url)
            upstream.caPath = Env.value(fhirUpstreamCa, "ACCOUNT_SERVER_FHIR_UPSTREAM_CA")
            if let seconds = try Self.number(fhirUpstreamConnectTimeout, "ACCOUNT_SERVER_FHIR_UPSTREAM_CONNECT_TIMEOUT") {
                guard seconds > 0 else { throw ValidationError("--fhir-upstream-connect-timeout must be positive") }
                upstream.connectTimeout = .milliseconds(Int64(seconds * 1000))
            }
            if let seconds = try Self.number(fhirUpstreamTimeout, "ACCOUNT_SERVER_FHIR_UPSTREAM_TIMEOUT") {
                guard seconds > 0 else { throw ValidationError("--fhir-upstream-timeout must be positive") }
                upstream.responseTimeout = .milliseconds(Int64(seconds * 1000))
            }
            web.fhirUpstream = upstream
        }
        if let issuer = Env.value(oidcIssuer, "ACCOUNT_SERVER_OIDC_ISSUER") {
            guard let clientID = Env.value(oidcClientId, "ACCOUNT_SERVER_OIDC_CLIENT_ID") else {
                throw ValidationError("--oidc-issuer needs --oidc-client-id")
            }
            var sso = SSOConfiguration(issuer: issuer, clientID: clientID)
            sso.clientSecretPath = Env.value(oidcClientSecretFile, "ACCOUNT_SERVER_OIDC_CLIENT_SECRET_FILE")
            sso.clientKeyPath = Env.value(oidcClientKeyFile, "ACCOUNT_SERVER_OIDC_CLIENT_KEY_FILE")
            sso.clientKeyID = Env.value(oidcClientKeyId, "ACCOUNT_SERVER_OIDC_CLIENT_KEY_ID")
            guard (sso.clientSecretPath == nil) != (sso.clientKeyPath == nil) else {
                throw ValidationError("--oidc-issuer needs exactly one of --oidc-client-secret-file (client_secret_basic) and --oidc-client-key-file (private_key_jwt)")
            }
            sso.acr = Env.value(oidcAcr, "ACCOUNT_SERVER_OIDC_ACR") ?? "eidas1"
            sso.scope = Env.value(oidcScope, "ACCOUNT_SERVER_OIDC_SCOPE") ?? "openid scope_all"
            sso.caPath = Env.value(oidcCa, "ACCOUNT_SERVER_OIDC_CA")
            sso.nationalIDClaim = Env.value(oidcNationalIdClaim, "ACCOUNT_SERVER_OIDC_NATIONAL_ID_CLAIM") ?? "SubjectNameID"
            web.sso = sso
        }
        guard web.lockout.maximumFailures >= 1, web.rateLimitPerMinute >= 1, web.sessionIdleTimeout > 0, web.sessionAbsoluteTimeout > 0 else {
            throw ValidationError("lockout, rate limit and session settings must be positive")
        }
        let configuration = web

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
                "client_certificates": "\(configuration.fhirClientCertificateHeader.map { "forwarded in \($0) by \(configuration.fhirTrustedProxies.joined(separator: ","))" } ?? "mutual TLS")",
                "upstream": "\(configuration.fhirUpstream?.url ?? "none")",
            ])
            if let developmentPKI, configuration.fhirClientCertificateHeader == nil {
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
        try await ServiceGroup(configuration: group).run()
    }

    static func hostAndPort(_ address: String, flag: String) throws -> (String, Int) {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]), (0...65535).contains(port) else {
            throw ValidationError("\(flag) must be HOST:PORT, got \(address)")
        }
        var host = String(address[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return (host, port)
    }

    private static func number<T: LosslessStringConvertible>(_ flag: T?, _ variable: String) throws -> T? {
        if let flag { return flag }
        guard let text = ProcessInfo.processInfo.environment[variable], !text.isEmpty else { return nil }
        guard let value = T(text) else { throw ValidationError("\(variable)=\(text) is not a valid number") }
        return value
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
