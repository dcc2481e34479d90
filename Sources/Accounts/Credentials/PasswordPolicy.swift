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
        // Refused for its length alone: the other checks' work grows with it (the run
        // analysis with its square), and a form may carry thousands of characters.
        if length > Self.maximumLength { return [.tooLong] }
        let folded = password.lowercased()
        let emailFolded = email.lowercased()
        let localPart = emailFolded.split(separator: "@").first.map(String.init) ?? emailFolded
        if folded == emailFolded || folded == localPart || (localPart.count >= 4 && folded.contains(localPart)) {
            violations.append(.sameAsEmail)
        }
        // Read as typed without Shift too: `!QAZ2wsx#EDC` is `1qaz2wsx3edc` typed on a QWERTY
        // keyboard with Shift on every other column; `&é"'(-` is `123456` on an AZERTY one.
        let readings = [folded] + Self.unshifted.map { table in String(folded.map { table[$0] ?? $0 }) }
        if readings.contains(where: isCommon) { violations.append(.common) }
        if readings.contains(where: { Self.isRepetitive($0) }) { violations.append(.repetitive) }
        return violations
    }

    /// A common password, also with digits or symbols added at the end ("motdepasse2024!").
    private func isCommon(_ folded: String) -> Bool {
        if common.contains(folded) { return true }
        let stem = String(folded.reversed().drop { !$0.isLetter }.reversed())
        return stem.count >= 4 && common.contains(stem)
    }

    /// What a shifted or AZERTY-unshifted character is on the digit row and around: QWERTY's
    /// Shift row (`!@#…`), QWERTY's shifted punctuation, AZERTY's unshifted digit row
    /// (`&é"'(-è_çà`). Two tables, as `&` and `(` mean different digits in each.
    private static let unshifted: [[Character: Character]] = [
        Dictionary(uniqueKeysWithValues: zip("!@#$%^&*()_+{}|:\"<>?~", "1234567890-=[]\\;',./`")),
        Dictionary(uniqueKeysWithValues: zip("&é\"'(-è_çà", "1234567890")),
    ]

    /// Runs people type without thinking: the alphabet, digits (wrapping), keyboard rows and
    /// columns (`1qaz2wsx…`) in AZERTY and QWERTY order, each forwards and backwards.
    private static let sequences: [[Character]] = {
        let forwards = [
            "abcdefghijklmnopqrstuvwxyz",
            String(repeating: "1234567890", count: 4),
            "azertyuiopqsdfghjklmwxcvbn",
            "qwertyuiopasdfghjklzxcvbnm",
            "azertyuiop^$qsdfghjklmù*wxcvbn,;:!",
            "1qaz2wsx3edc4rfv5tgb6yhn7ujm8ik,9ol.0p;/",
            "1aqw2zsx3edc4rfv5tgb6yhn7uj,8ik;9ol:0pm!",
        ]
        return (forwards + forwards.map { String($0.reversed()) }).map(Array.init)
    }()

    /// At most this many pieces (``pieces(of:)``) is a password made of runs.
    static let fewestPieces = 4

    /// A password that is mostly runs: one character repeated, pieces of well-known sequences
    /// put together ("zxcvbnmasdfg", "azertyazerty", "AAAAAAAAAAAb"), or a short block
    /// repeated ("soleilsoleil").
    static func isRepetitive(_ folded: String) -> Bool {
        let characters = Array(folded)
        guard !characters.isEmpty else { return false }
        if pieces(of: characters) <= fewestPieces { return true }
        for blockLength in 1...min(6, characters.count / 2) where characters.count % blockLength == 0 {
            let block = characters[0..<blockLength]
            if stride(from: blockLength, to: characters.count, by: blockLength).allSatisfy({ characters[$0..<$0 + blockLength] == block }) { return true }
        }
        return false
    }

    /// The fewest pieces `characters` splits into, a piece being three or more characters in
    /// a row of a known sequence, a character repeated, or any one character. A password of
    /// random characters has as many pieces as characters.
    static func pieces(of characters: [Character]) -> Int {
        let count = characters.count
        var fewest = [Int](repeating: Int.max, count: count + 1)
        fewest[0] = 0
        for start in 0..<count where fewest[start] != Int.max {
            let next = fewest[start] + 1
            fewest[start + 1] = min(fewest[start + 1], next)
            var end = start + 1
            while end < count && characters[end] == characters[start] { end += 1 }
            if end - start >= 2 { for stop in (start + 2)...end { fewest[stop] = min(fewest[stop], next) } }
            for sequence in sequences {
                for offset in sequence.indices where sequence[offset] == characters[start] {
                    var length = 1
                    while start + length < count, offset + length < sequence.count, sequence[offset + length] == characters[start + length] { length += 1 }
                    if length >= 3 { for stop in (start + 3)...(start + length) { fewest[stop] = min(fewest[stop], next) } }
                }
            }
        }
        return fewest[count]
    }
}
