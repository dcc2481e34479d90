import Foundation

/// Why a chosen password is refused; each has the sentence the regulator reads (in French).
public enum PasswordPolicyViolation: String, Sendable, Equatable, CaseIterable {
    case tooShort
    case tooLong
    case sameAsEmail
    case common
    case repetitive

    public var frenchMessage: String {
        switch self {
        case .tooShort: return "Le mot de passe doit contenir au moins \(PasswordPolicy.minimumLength) caractères."
        case .tooLong: return "Le mot de passe ne doit pas dépasser \(PasswordPolicy.maximumLength) caractères."
        case .sameAsEmail: return "Le mot de passe ne doit pas reprendre votre adresse e-mail."
        case .common: return "Ce mot de passe est trop courant : choisissez-en un autre."
        case .repetitive: return "Le mot de passe ne doit pas être une répétition ou une suite de caractères."
        }
    }
}

/// The rules a regulator's own password must meet (NIST SP 800-63B style: length, not the
/// e-mail, not a known common password; no composition rules).
public struct PasswordPolicy: Sendable {
    public static let minimumLength = 12
    /// argon2 accepts any length, but an unbounded one is a denial-of-service lever.
    public static let maximumLength = 256

    private let common: Set<String>

    /// Loads the bundled list of common passwords (zxcvbn's 30,000 plus French ones).
    public init() {
        if let url = Self.listURL(), let text = try? String(contentsOf: url, encoding: .utf8) {
            common = Set(text.split(separator: "\n").map(String.init))
        } else {
            common = []
        }
    }

    /// The resource folder SwiftPM builds beside the executable.
    public static let resourceFolder = "account-server_Accounts.resources"

    /// The list's file, looked for beside the executable (through a symlink to it, as
    /// `/usr/local/bin/account-server → /opt/account-server/account-server`). Not through
    /// `Bundle.module`: it also looks in the build folder by absolute path, so a binary copied
    /// without its resources still found them on the build machine, and elsewhere it stops the
    /// process with a trap (a crash loop under systemd) instead of the refusal that names the
    /// missing folder.
    static func listURL() -> URL? {
        #if canImport(Darwin)
        // macOS builds a `.bundle`, found by Bundle.module (a development platform only).
        return Bundle.module.url(forResource: "common-passwords", withExtension: "txt")
        #else
        var folders = [Bundle.main.bundleURL]
        if let executable = Bundle.main.executableURL {
            folders.append(executable.deletingLastPathComponent())
            folders.append(executable.resolvingSymlinksInPath().deletingLastPathComponent())
        }
        for folder in folders {
            let file = folder.appendingPathComponent(resourceFolder).appendingPathComponent("common-passwords.txt")
            if FileManager.default.isReadableFile(atPath: file.path) { return file }
        }
        return nil
        #endif
    }

    /// Whether the bundled list is loaded (the service refuses to start without it).
    public var isLoaded: Bool { common.count > 1000 }

    public func violations(of password: String, email: String) -> [PasswordPolicyViolation] {
        var violations: [PasswordPolicyViolation] = []
        let length = password.count
        if length < Self.minimumLength { violations.append(.tooShort) }
        if length > Self.maximumLength { violations.append(.tooLong) }
        let folded = password.lowercased()
        let emailFolded = email.lowercased()
        let localPart = emailFolded.split(separator: "@").first.map(String.init) ?? emailFolded
        if folded == emailFolded || folded == localPart || (localPart.count >= 4 && folded.contains(localPart)) {
            violations.append(.sameAsEmail)
        }
        if isCommon(folded) { violations.append(.common) }
        if isRepetitive(folded) { violations.append(.repetitive) }
        return violations
    }

    /// A common password, also with digits or symbols added at the end ("motdepasse2024!").
    private func isCommon(_ folded: String) -> Bool {
        if common.contains(folded) { return true }
        let stem = String(folded.reversed().drop { !$0.isLetter }.reversed())
        return stem.count >= 4 && common.contains(stem)
    }

    /// Runs people type without thinking: the alphabet, digits (wrapping), keyboard rows in
    /// AZERTY and QWERTY order, each forwards and backwards.
    private static let sequences: [String] = {
        let forwards = [
            "abcdefghijklmnopqrstuvwxyz",
            String(repeating: "1234567890", count: 4),
            "azertyuiopqsdfghjklmwxcvbn",
            "qwertyuiopasdfghjklzxcvbnm",
            "azertyuiop^$qsdfghjklmù*wxcvbn,;:!",
        ]
        return forwards + forwards.map { String($0.reversed()) }
    }()

    /// One character repeated, or a piece of a well-known sequence ("abcdefghijkl",
    /// "123456789012", "azertyuiopqsdf").
    private func isRepetitive(_ folded: String) -> Bool {
        guard let first = folded.first else { return false }
        if folded.allSatisfy({ $0 == first }) { return true }
        return folded.count >= 6 && Self.sequences.contains { $0.contains(folded) }
    }
}
