import ArgumentParser
import Configuration
import Foundation
import SystemPackage

/// Where `serve`'s settings come from, read through swift-configuration's `ConfigReader`,
/// highest precedence first:
///
/// 1. the command line: the options ArgumentParser parsed (it keeps `--help` and validation),
///    put in an in-memory provider;
/// 2. the environment: `ACCOUNT_SERVER_…` variables;
/// 3. a JSON file named by `--config-file` (or `ACCOUNT_SERVER_CONFIG_FILE`).
///
/// A key is its flag's words joined by dots: `fhir.upstream.timeout` is
/// `--fhir-upstream-timeout`, `ACCOUNT_SERVER_FHIR_UPSTREAM_TIMEOUT` and
/// `{"fhir": {"upstream": {"timeout": 30}}}`. A value present but malformed is an error naming
/// the flag, never a silent fallback to the default.
struct Settings: Sendable {
    let reader: ConfigReader
    /// Which sources are in use, for the start-up log line.
    let sources: [String]

    /// Keys whose values may carry a secret (a database URL with its password): redacted by
    /// the providers wherever swift-configuration reports or prints them.
    static let secretKeys: Set<String> = ["database"]

    /// - Parameter knownKeys: when given, a file key outside it is refused (a misspelt key
    ///   would otherwise leave its setting at the default without a word).
    init(commandLine: [AbsoluteConfigKey: ConfigValue], environment: [String: String], file: String?, knownKeys: Set<String>? = nil) async throws {
        var providers: [any ConfigProvider] = [InMemoryProvider(name: "command line", values: commandLine)]
        var sources = ["command line"]
        let secretVariables = Set(Self.secretKeys.map { Self.variable($0) })
        providers.append(EnvironmentVariablesProvider(environmentVariables: environment.filter { $0.key.hasPrefix("ACCOUNT_SERVER_") && !$0.value.isEmpty },
                                                      secretsSpecifier: .specific(secretVariables))
            .prefixKeys(with: "account.server"))
        sources.append("environment")
        if let file {
            guard FileManager.default.fileExists(atPath: file) else { throw ValidationError("--config-file: no file at \(file)") }
            do {
                providers.append(try await FileProvider<JSONSnapshot>(filePath: FilePath(file)))
            } catch {
                throw ValidationError("--config-file \(file): not a JSON object of settings (\(error))")
            }
            if let knownKeys {
                let unknown = Self.keys(inJSONFile: file).subtracting(knownKeys)
                guard unknown.isEmpty else {
                    throw ValidationError("--config-file \(file): unknown setting(s) \(unknown.sorted().joined(separator: ", ")) (docs/configuration.md lists them)")
                }
            }
            sources.append(file)
        }
        self.reader = ConfigReader(providers: providers)
        self.sources = sources
    }

    /// The settings of an operator tool (`admin`, `audit`): its own flags, the environment,
    /// and the file `ACCOUNT_SERVER_CONFIG_FILE` names, so it finds the server's database.
    static func forOperatorTool(commandLine: [AbsoluteConfigKey: ConfigValue] = [:]) async throws -> Settings {
        let environment = ProcessInfo.processInfo.environment
        return try await Settings(commandLine: commandLine, environment: environment,
                                  file: environment["ACCOUNT_SERVER_CONFIG_FILE"].flatMap { $0.isEmpty ? nil : $0 })
    }

    /// The `--database` of a command-line tool: its flag, else `ACCOUNT_SERVER_DATABASE`, else
    /// the default file.
    static func database(_ flag: String?) async throws -> String {
        var values = CommandLineValues()
        values.set("database", flag)
        return try await forOperatorTool(commandLine: values.values).string("database") ?? "./data/account-server.sqlite"
    }

    /// The dotted keys of a JSON settings file: nested objects joined with dots, arrays as
    /// values.
    static func keys(inJSONFile file: String) -> Set<String> {
        guard let data = FileManager.default.contents(atPath: file),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return [] }
        var keys: Set<String> = []
        func walk(_ object: [String: Any], prefix: String) {
            for (key, value) in object {
                let path = prefix.isEmpty ? key : prefix + "." + key
                if let nested = value as? [String: Any] { walk(nested, prefix: path) } else { keys.insert(path) }
            }
        }
        walk(object, prefix: "")
        return keys
    }

    // MARK: Reading

    func string(_ key: String) throws -> String? {
        let configKey = ConfigKey(key)
        if let text = reader.string(forKey: configKey, isSecret: Self.secretKeys.contains(key)) { return text.isEmpty ? nil : text }
        // A file may hold a number where text is expected (`"version": 3`): take its text.
        if let number = reader.int(forKey: configKey) { return String(number) }
        if let number = reader.double(forKey: configKey) { return String(number) }
        return nil
    }

    /// A list: repeated flags, a comma-separated variable, or a JSON array.
    func list(_ key: String) throws -> [String] {
        let configKey = ConfigKey(key)
        if let values = reader.stringArray(forKey: configKey) {
            return values.map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
        if let single = try string(key) {
            return single.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
        return []
    }

    /// A switch: a flag given, or `1`, `true`, `yes` (`0`, `false`, `no` turn it off).
    /// `defaultValue`: when given nowhere (a switch on unless turned off: `--no-…`).
    func flag(_ key: String, default defaultValue: Bool = false) throws -> Bool {
        if let value = reader.bool(forKey: ConfigKey(key)) { return value }
        guard let text = try string(key) else { return defaultValue }
        switch text.lowercased() {
        case "1", "true", "yes": return true
        case "0", "false", "no": return false
        default: throw ValidationError("\(Self.describe(key)) must be true or false, got \(text)")
        }
    }

    func int(_ key: String) throws -> Int? {
        if let value = reader.int(forKey: ConfigKey(key)) { return value }
        guard let text = try string(key) else { return nil }
        guard let value = Int(text) else { throw ValidationError("\(Self.describe(key)) must be a whole number, got \(text)") }
        return value
    }

    func uint32(_ key: String) throws -> UInt32? {
        guard let value = try int(key) else { return nil }
        guard let narrowed = UInt32(exactly: value) else { throw ValidationError("\(Self.describe(key)) is out of range: \(value)") }
        return narrowed
    }

    func double(_ key: String) throws -> Double? {
        if let value = reader.double(forKey: ConfigKey(key)) { return value }
        if let value = reader.int(forKey: ConfigKey(key)) { return Double(value) }
        guard let text = try string(key) else { return nil }
        guard let value = Double(text) else { throw ValidationError("\(Self.describe(key)) must be a number, got \(text)") }
        return value
    }

    // MARK: Names

    /// `fhir.upstream.timeout` → `--fhir-upstream-timeout`.
    static func flagName(_ key: String) -> String { "--" + key.replacingOccurrences(of: ".", with: "-") }
    /// `fhir.upstream.timeout` → `ACCOUNT_SERVER_FHIR_UPSTREAM_TIMEOUT`.
    static func variable(_ key: String) -> String { "ACCOUNT_SERVER_" + key.replacingOccurrences(of: ".", with: "_").uppercased() }
    static func describe(_ key: String) -> String { "\(flagName(key)) (\(variable(key)))" }
}

/// The options ArgumentParser parsed, as the highest-precedence provider's values.
struct CommandLineValues {
    private(set) var values: [AbsoluteConfigKey: ConfigValue] = [:]

    mutating func set(_ key: String, _ value: String?) {
        guard let value else { return }
        values[AbsoluteConfigKey(ConfigKey(key))] = ConfigValue(.string(value), isSecret: Settings.secretKeys.contains(key))
    }

    mutating func set(_ key: String, _ value: [String]) {
        guard !value.isEmpty else { return }
        values[AbsoluteConfigKey(ConfigKey(key))] = ConfigValue(.stringArray(value), isSecret: false)
    }

    /// A switch given on the command line, on (`--x`) or off (`--no-x`), wins over the
    /// environment and the file; one not given leaves them to say.
    mutating func set(_ key: String, _ value: Bool?) {
        guard let value else { return }
        values[AbsoluteConfigKey(ConfigKey(key))] = ConfigValue(.bool(value), isSecret: false)
    }

    mutating func set<T: BinaryInteger>(_ key: String, _ value: T?) {
        guard let value else { return }
        values[AbsoluteConfigKey(ConfigKey(key))] = ConfigValue(.int(Int(value)), isSecret: false)
    }

    mutating func set(_ key: String, _ value: Double?) {
        guard let value else { return }
        values[AbsoluteConfigKey(ConfigKey(key))] = ConfigValue(.double(value), isSecret: false)
    }
}

/// A URL from the configuration, as an error message may repeat it: scheme, host, port and
/// path only. A user, password, query or fragment may hold a credential the operator typed
/// (`smtps://user:pass@…`, `…?token=…`), and the message goes to the terminal and the journal.
func shownURL(_ text: String) -> String {
    // Without a `//host`, what follows the scheme is parsed as a path, and it may be
    // `user:password@host` (`smtp:user:pw@relay`): nothing of it is shown.
    guard let components = URLComponents(string: text), let scheme = components.scheme, let host = components.host, !host.isEmpty else {
        return "a value that is not an absolute URL (not repeated)"
    }
    var shown = scheme + "://" + (host.contains(":") && !host.hasPrefix("[") ? "[\(host)]" : host)
    if let port = components.port { shown += ":\(port)" }
    // A path holding `@` could be a credential written in the wrong place.
    shown += components.path.contains("@") ? "/…" : components.path
    let hidden = [components.user != nil || components.password != nil ? "user" : nil, components.query != nil ? "query" : nil,
                  components.fragment != nil ? "fragment" : nil].compactMap { $0 }
    return hidden.isEmpty ? shown : shown + " (its \(hidden.joined(separator: ", ")) not shown)"
}
