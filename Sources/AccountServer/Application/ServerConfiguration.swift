import Accounts
import Foundation
import Logging

/// Everything `serve` needs, resolved from flags, environment and defaults. Tests build one
/// directly.
struct ServerConfiguration: Sendable {
    var databasePath: String
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
    /// How often CRL files are checked for changes (SIGHUP reloads at once).
    var crlPollInterval: Duration = .seconds(5)
    var logLevel: Logger.Level = .info
}

/// A configuration problem found before anything starts; printed and the process exits.
struct ConfigurationError: Error, CustomStringConvertible {
    var description: String
}
