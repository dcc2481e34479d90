@testable import AccountServer
import Foundation
import Testing

@Suite("Settings")
struct SettingsTests {
    static let switches = ["admin.tls", "allow.missing.crl", "forward.auth.tls", "fhir.proxy.tls"]

    /// The switches of `serve` resolved from a command line, an environment that sets two of
    /// them, and a file that sets the other two.
    static func resolve(_ arguments: [String], environment: [String: String], file: URL) async throws -> [Bool] {
        let command = try ServeCommand.parse(arguments)
        let settings = try await Settings(commandLine: command.commandLineValues, environment: environment, file: file.path,
                                          knownKeys: ServeCommand.knownKeys)
        return try switches.map { try settings.flag($0) }
    }

    /// A switch set in the environment or in the file is turned off by its `--no-` flag (it
    /// could not be before: a flag not given and a flag given off were the same), and a
    /// switch set off there is turned on by its flag; given neither way, the other sources say.
    @Test func switchesAreTurnedOnAndOffFromTheCommandLine() async throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("switches-\(UUID().uuidString).json")
        defer { try? FileManager.default.removeItem(at: file) }
        try #"{"forward.auth.tls": true, "fhir": {"proxy": {"tls": true}}}"#.write(to: file, atomically: true, encoding: .utf8)
        let on = ["ACCOUNT_SERVER_ADMIN_TLS": "1", "ACCOUNT_SERVER_ALLOW_MISSING_CRL": "true"]
        #expect(try await Self.resolve([], environment: on, file: file) == [true, true, true, true])
        #expect(try await Self.resolve(["--no-admin-tls", "--no-allow-missing-crl", "--no-forward-auth-tls", "--no-fhir-proxy-tls"],
                                       environment: on, file: file) == [false, false, false, false])
        #expect(try await Self.resolve(["--no-admin-tls"], environment: on, file: file) == [false, true, true, true])
        let off = ["ACCOUNT_SERVER_ADMIN_TLS": "0", "ACCOUNT_SERVER_ALLOW_MISSING_CRL": "no"]
        #expect(try await Self.resolve(["--admin-tls"], environment: off, file: file) == [true, false, true, true])
        // The last of a flag and its negation wins, as with any repeated switch.
        #expect(try await Self.resolve(["--admin-tls", "--no-admin-tls"], environment: [:], file: file)[0] == false)
    }

    /// `--no-shared-admin-token`: on unless turned off, from any source; the flag wins.
    @Test func theSharedAdminTokenIsOnUnlessTurnedOff() async throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("shared-token-\(UUID().uuidString).json")
        defer { try? FileManager.default.removeItem(at: file) }
        try "{}".write(to: file, atomically: true, encoding: .utf8)
        func resolve(_ arguments: [String], _ environment: [String: String] = [:]) async throws -> Bool {
            let settings = try await Settings(commandLine: try ServeCommand.parse(arguments).commandLineValues, environment: environment,
                                              file: file.path, knownKeys: ServeCommand.knownKeys)
            return try ServeCommand.sharedAdminToken(settings)
        }
        #expect(try await resolve([]) == true)
        #expect(try await resolve(["--no-shared-admin-token"]) == false)
        #expect(try await resolve([], ["ACCOUNT_SERVER_SHARED_ADMIN_TOKEN": "0"]) == false)
        #expect(try await resolve(["--shared-admin-token"], ["ACCOUNT_SERVER_SHARED_ADMIN_TOKEN": "0"]) == true)
        try #"{"shared": {"admin": {"token": false}}}"#.write(to: file, atomically: true, encoding: .utf8)
        #expect(try await resolve([]) == false)
        #expect(try await resolve(["--shared-admin-token"]) == true)
        await #expect(throws: (any Error).self) { _ = try await resolve([], ["ACCOUNT_SERVER_SHARED_ADMIN_TOKEN": "maybe"]) }
    }
}
