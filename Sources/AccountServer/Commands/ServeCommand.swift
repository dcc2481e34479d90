import Accounts
import ArgumentParser
import Foundation
import Hummingbird
import Logging

/// `account-server serve`: runs the FHIR mutual-TLS listener. With no TLS flag at all it
/// generates and uses a development PKI under `./data/pki` and prints a ready-to-paste curl.
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "serve", abstract: "Run the server (see docs/configuration.md).")

    @Option(help: "SQLite database file. Env: ACCOUNT_SERVER_DATABASE. Default: ./data/account-server.sqlite")
    var database: String?

    @Option(help: "FHIR mTLS listener, HOST:PORT. Env: ACCOUNT_SERVER_FHIR_ADDRESS. Default: 127.0.0.1:8443")
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

    @Option(help: "Seconds between CRL file change checks. Env: ACCOUNT_SERVER_CRL_POLL_SECONDS. Default: 5")
    var crlPollSeconds: Int?

    @Option(help: "Directory of the development PKI used when no TLS flag is given. Env: ACCOUNT_SERVER_DEV_PKI. Default: ./data/pki")
    var devPki: String?

    @Option(help: "trace, debug, info, notice, warning, error, critical. Env: ACCOUNT_SERVER_LOG_LEVEL. Default: info")
    var logLevel: String?

    func run() async throws {
        typealias Env = EnvironmentFallback
        let levelText = Env.value(logLevel, "ACCOUNT_SERVER_LOG_LEVEL") ?? "info"
        guard let level = Logger.Level(rawValue: levelText) else { throw ValidationError("unknown log level \(levelText)") }
        var logger = Logger(label: "account-server")
        logger.logLevel = level

        let address = Env.value(fhirAddress, "ACCOUNT_SERVER_FHIR_ADDRESS") ?? "127.0.0.1:8443"
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]), (0...65535).contains(port) else {
            throw ValidationError("--fhir-address must be HOST:PORT, got \(address)")
        }
        var host = String(address[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }

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
        let configuration = ServerConfiguration(
            databasePath: Env.value(database, "ACCOUNT_SERVER_DATABASE") ?? "./data/account-server.sqlite",
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
        guard configuration.argon2.memoryKiB >= 8 * configuration.argon2.parallelism, configuration.argon2.iterations >= 1, configuration.argon2.parallelism >= 1 else {
            throw ValidationError("argon2 parameters out of range (memory ≥ 8×parallelism KiB, iterations ≥ 1, parallelism ≥ 1)")
        }

        let listeningLogger = logger
        let listeningHost = host
        let pkiForCurl = developmentPKI
        let app = try await buildApplication(configuration, logger: logger) { boundPort in
            let logger = listeningLogger, host = listeningHost, developmentPKI = pkiForCurl
            logger.notice("FHIR mTLS endpoint listening", metadata: ["address": "\(host):\(boundPort)"])
            if let developmentPKI {
                FileHandle.standardOutput.write(Data(Self.curlExample(pki: developmentPKI, port: boundPort).utf8))
            }
        }
        try await app.runService()
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
