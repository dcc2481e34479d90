import Accounts
import Foundation
import Testing

@Suite("Credentials: TOTP, tokens, recovery codes, password policy, lockout")
struct CredentialTests {
    // MARK: TOTP

    static let rfcSecret = Array("12345678901234567890".utf8)

    @Test(arguments: [(59, "94287082"), (1_111_111_109, "07081804"), (1_111_111_111, "14050471"),
                      (1_234_567_890, "89005924"), (2_000_000_000, "69279037"), (20_000_000_000, "65353130")] as [(Int64, String)])
    func rfc6238Vectors(time: Int64, expected: String) {
        let totp = TOTP(digits: 8)
        #expect(totp.code(secret: Self.rfcSecret, step: time / 30) == expected)
    }

    @Test func acceptsOneStepOfDriftAndRefusesReplay() {
        let totp = TOTP()
        let secret = TOTP.generateSecret()
        let now = Date(timeIntervalSince1970: 1_800_000_015)
        let step = totp.step(at: now)
        for offset: Int64 in [-1, 0, 1] {
            #expect(totp.verify(totp.code(secret: secret, step: step + offset), secret: secret, at: now, lastUsedStep: nil) == step + offset)
        }
        #expect(totp.verify(totp.code(secret: secret, step: step - 2), secret: secret, at: now, lastUsedStep: nil) == nil)
        #expect(totp.verify(totp.code(secret: secret, step: step + 2), secret: secret, at: now, lastUsedStep: nil) == nil)
        // A code already used (or older than the last used one) is refused.
        let code = totp.code(secret: secret, step: step)
        #expect(totp.verify(code, secret: secret, at: now, lastUsedStep: step) == nil)
        #expect(totp.verify(totp.code(secret: secret, step: step - 1), secret: secret, at: now, lastUsedStep: step) == nil)
        #expect(totp.verify(totp.code(secret: secret, step: step + 1), secret: secret, at: now, lastUsedStep: step) == step + 1)
        #expect(totp.verify("12345", secret: secret, at: now, lastUsedStep: nil) == nil)
        #expect(totp.verify("abcdef", secret: secret, at: now, lastUsedStep: nil) == nil)
    }

    @Test func provisioningURI() {
        let uri = TOTP().provisioningURI(secret: Array("foobar".utf8), account: "jules.marius@test.com", issuer: "Agenda Éditeur")
        #expect(uri.hasPrefix("otpauth://totp/Agenda%20%C3%89diteur%3Ajules.marius%40test.com?secret=MZXW6YTBOI&issuer=Agenda%20%C3%89diteur"))
        #expect(uri.hasSuffix("&algorithm=SHA1&digits=6&period=30"))
    }

    @Test(arguments: [("", ""), ("f", "MY"), ("fo", "MZXQ"), ("foo", "MZXW6"), ("foob", "MZXW6YQ"), ("fooba", "MZXW6YTB"), ("foobar", "MZXW6YTBOI")])
    func base32Vectors(plain: String, encoded: String) {
        #expect(Base32.encode(Array(plain.utf8)) == encoded)
        #expect(Base32.decode(encoded.lowercased()) == Array(plain.utf8))
    }

    @Test func base32RefusesOtherCharacters() {
        #expect(Base32.decode("MZXW1") == nil)
        let secret = TOTP.generateSecret()
        #expect(Base32.decode(Base32.encode(secret)) == secret)
    }

    // MARK: Tokens and recovery codes

    @Test func tokensAre256BitAndHashed() {
        let tokens = (0..<100).map { _ in SecretToken.generate() }
        #expect(Set(tokens).count == 100)
        #expect(tokens.allSatisfy { $0.count == 43 && !$0.contains("=") && !$0.contains("+") && !$0.contains("/") })
        let hash = SecretToken.hash(tokens[0])
        #expect(hash.count == 64 && hash != tokens[0])
        #expect(SecretToken.hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SecretToken.constantTimeEquals(Array("same".utf8), Array("same".utf8)))
        #expect(!SecretToken.constantTimeEquals(Array("same".utf8), Array("sane".utf8)))
        #expect(!SecretToken.constantTimeEquals(Array("same".utf8), Array("same!".utf8)))
    }

    @Test func recoveryCodes() throws {
        let codes = RecoveryCodes.generate()
        #expect(codes.count == 10 && Set(codes).count == 10)
        #expect(codes.allSatisfy { $0.count == 11 && $0.dropFirst(5).first == "-" })
        let code = codes[0]
        let box = try SecretBox(key: Array(repeating: 3, count: 32))
        #expect(RecoveryCodes.storedForm(code.lowercased().replacingOccurrences(of: "-", with: " "), accountID: "a", box: box)
                == RecoveryCodes.storedForm(code, accountID: "a", box: box))
        #expect(RecoveryCodes.normalize("ab0o1-il") == "AB00111")
        #expect(RecoveryCodes.storedForm(codes[0], accountID: "a", box: box) != RecoveryCodes.storedForm(codes[1], accountID: "a", box: box))
        // Keyed and bound to the account: the same code stored for two accounts, or under
        // another server key, gives another value, and never its plain SHA-256.
        let stored = RecoveryCodes.storedForm(code, accountID: "a", box: box)
        #expect(stored != RecoveryCodes.storedForm(code, accountID: "b", box: box))
        #expect(stored != RecoveryCodes.storedForm(code, accountID: "a", box: try SecretBox(key: Array(repeating: 4, count: 32))))
        #expect(!stored.contains(RecoveryCodes.legacyHash(code)) && stored.hasPrefix("h1:") && stored.count == 3 + 64)
    }

    // MARK: Password policy

    let policy = PasswordPolicy()

    @Test func policyListIsLoaded() {
        #expect(policy.isLoaded)
    }

    @Test(arguments: ["Vélo-rouge-sur-la-Loire", "correct horse battery staple", "Tq9#mZ2$wL8!vR", "Lune-bleue-sur-Brest-29", "Kf7#pQ2!xN4&",
                      "abc-Guérande-1987", "qwerty est un clavier"])
    func acceptsGoodPasswords(_ password: String) {
        #expect(policy.violations(of: password, email: "jules.marius@test.com").isEmpty)
    }

    @Test(arguments: [
        ("court", PasswordPolicyViolation.tooShort),
        ("jules.marius@test.com", .sameAsEmail),
        ("JULES.MARIUS@TEST.COM", .sameAsEmail),
        ("jules.marius-2024!", .sameAsEmail),
        ("qwertyuiopasdfgh", .repetitive),
        ("azertyuiopqsdfgh", .repetitive),
        ("0987654321098", .repetitive),
        ("motdepasse123456", .common),
        ("Password123456!", .common),
        ("aaaaaaaaaaaaaa", .repetitive),
        ("abcdefghijklmn", .repetitive),
        ("123456789012", .repetitive),
        (String(repeating: "x1", count: 200), .tooLong),
        (String(repeating: "a", count: 8_000), .tooLong),
        // Keyboard columns with Shift on every other one (QWERTY), rows put together,
        // AZERTY's unshifted digits, one character nearly throughout, short blocks repeated.
        ("!QAZ2wsx#EDC", .repetitive),
        ("zaq1xsw2cde3", .repetitive),
        ("zxcvbnmasdfg", .repetitive),
        ("qsdfghjklmwxcv", .repetitive),
        ("&é\"'(-è_çà&é", .repetitive),
        ("AAAAAAAAAAAb", .repetitive),
        ("abcdefxyz123", .repetitive),
        ("soleilsoleil", .repetitive),
        ("Ab3$Ab3$Ab3$", .repetitive),
    ])
    func refusesWeakPasswords(_ password: String, _ violation: PasswordPolicyViolation) {
        #expect(policy.violations(of: password, email: "jules.marius@test.com").contains(violation))
    }

    @Test func messagesAreFrench() {
        #expect(PasswordPolicyViolation.allCases.allSatisfy { $0.frenchMessage.contains("mot de passe") || $0.frenchMessage.contains("Ce mot de passe") || $0.frenchMessage.contains("Le mot de passe") })
    }

    // MARK: argon2 admission

    /// With a limit, a hash beyond it is refused at once (one atomic step: callers arriving
    /// together cannot all see room); without one, it queues.
    @Test func hashesBeyondTheAdmissionLimitAreRefusedNotQueued() async throws {
        let hasher = PasswordHasher(parameters: Argon2Parameters(memoryKiB: 65_536, iterations: 8, parallelism: 1), threads: 1)
        let running = Task { try await hasher.hash(Array("première".utf8), admittingUpTo: 10) }
        while hasher.queueDepth == 0 { try await Task.sleep(for: .milliseconds(1)) }
        await #expect(throws: PasswordHasher.Busy.self) { try await hasher.hash(Array("seconde".utf8), admittingUpTo: 1) }
        await #expect(throws: PasswordHasher.Busy.self) { try await hasher.verifyAny([Array("x".utf8)], encoded: "$argon2id$", admittingUpTo: 1) }
        #expect(hasher.queueDepth == 1, "a refused hash leaves nothing counted")
        let queued = try await hasher.hash(Array("seconde".utf8), admittingUpTo: 2)
        #expect(queued.hasPrefix("$argon2id$"))
        _ = try await running.value
        #expect(hasher.queueDepth == 0)
        // Hashes asked without a limit (the SAS's creates) do not count toward it.
        let unlimited = Task { try await hasher.hash(Array("sas".utf8)) }
        while hasher.queueDepth == 0 { try await Task.sleep(for: .milliseconds(1)) }
        let admitted = Task { try await hasher.hash(Array("web".utf8), admittingUpTo: 1) }
        #expect(try await admitted.value.hasPrefix("$argon2id$"), "a SAS hash under way leaves the web its room")
        _ = try await unlimited.value
        try await hasher.shutdown()
    }

    // MARK: Lockout

    @Test func locksAfterConsecutiveFailuresForTheCoolingPeriod() {
        let lockout = LockoutPolicy(maximumFailures: 3, coolingPeriod: .seconds(900))
        let start = Date(timeIntervalSince1970: 1_800_000_000)
        var state = LockoutPolicy.State()
        for attempt in 1...2 {
            let result = lockout.recordingFailure(state, at: start)
            state = result.state
            #expect(!result.locked && state.consecutiveFailures == attempt && !lockout.isLocked(state, at: start))
        }
        let third = lockout.recordingFailure(state, at: start)
        #expect(third.locked)
        state = third.state
        #expect(lockout.isLocked(state, at: start.addingTimeInterval(899)))
        #expect(!lockout.isLocked(state, at: start.addingTimeInterval(900)))
        // Failures while locked do not extend the lock.
        #expect(lockout.recordingFailure(state, at: start.addingTimeInterval(10)).state == state)
        // After the cooling period the count goes on: the next failure locks again, for
        // twice as long (a phished password gets no fresh run of guesses).
        let after = lockout.recordingFailure(state, at: start.addingTimeInterval(901))
        #expect(after.locked && after.state.consecutiveFailures == 4)
        #expect(after.state.lockedUntil == start.addingTimeInterval(901 + 1_800))
        #expect(lockout.recordingSuccess() == LockoutPolicy.State())
    }

    @Test func eachFailureAfterALockLocksAgainForLongerUntilAQuietPeriod() throws {
        let lockout = LockoutPolicy(maximumFailures: 5, coolingPeriod: .seconds(900),
                                    maximumWait: .seconds(4 * 3600), failureResetTime: .seconds(12 * 3600))
        var now = Date(timeIntervalSince1970: 1_800_000_000)
        var state = LockoutPolicy.State()
        for _ in 1...5 { state = lockout.recordingFailure(state, at: now).state }
        var waits: [TimeInterval] = []
        var guesses = 5
        // An attacker guessing as soon as each lock runs out, for a day.
        let end = now.addingTimeInterval(24 * 3600)
        while let until = state.lockedUntil, until < end {
            waits.append(until.timeIntervalSince(now))
            now = until
            let result = lockout.recordingFailure(state, at: now)
            #expect(result.locked)
            state = result.state
            guesses += 1
        }
        #expect(Array(waits.prefix(6)) == [900, 1_800, 3_600, 7_200, 14_400, 14_400])
        #expect(guesses == 14, "guesses in the first day with a 4-hour cap: \(guesses)")
        // At the defaults (24-hour cap): 5, then one after each lock of 15 min … 8 h.
        let defaults = LockoutPolicy()
        var day = LockoutPolicy.State()
        var clock = Date(timeIntervalSince1970: 1_800_000_000)
        var defaultGuesses = 0
        while clock < Date(timeIntervalSince1970: 1_800_000_000 + 24 * 3600) {
            day = defaults.recordingFailure(day, at: clock).state
            defaultGuesses += 1
            if let until = day.lockedUntil { clock = until }
        }
        #expect(defaultGuesses == 11, "was 5 per 15 minutes, 480 a day")
        // Quiet for the reset time after the last lock ran out: the count starts again.
        let lastLockEnds = try #require(state.lockedUntil)
        let quietAt = lastLockEnds.addingTimeInterval(12 * 3600)
        let quiet = lockout.recordingFailure(state, at: quietAt)
        #expect(!quiet.locked && quiet.state == LockoutPolicy.State(consecutiveFailures: 1, lockedUntil: nil, lastFailureAt: quietAt))
        // One second short of it: locked again, for the longest wait.
        let early = lockout.recordingFailure(state, at: lastLockEnds.addingTimeInterval(12 * 3600 - 1))
        #expect(early.locked && early.state.consecutiveFailures == state.consecutiveFailures + 1)
        #expect(lockout.wait(afterFailures: 4) == nil && lockout.wait(afterFailures: 1_000) == 4 * 3600)
    }

    /// Below the threshold, the quiet time counts from the last failure (Keycloak's "failure
    /// reset time"): a regulator's typos months apart never add up into a lock, while
    /// failures closer together than the quiet time still do.
    @Test func failuresBelowTheThresholdExpireAfterTheQuietTime() {
        let lockout = LockoutPolicy(maximumFailures: 3, coolingPeriod: .seconds(900), failureResetTime: .seconds(12 * 3600))
        let start = Date(timeIntervalSince1970: 1_800_000_000)
        var state = LockoutPolicy.State()
        state = lockout.recordingFailure(state, at: start).state
        state = lockout.recordingFailure(state, at: start.addingTimeInterval(3600)).state
        #expect(state == LockoutPolicy.State(consecutiveFailures: 2, lockedUntil: nil, lastFailureAt: start.addingTimeInterval(3600)))
        // The quiet time runs from the second failure, not the first.
        let close = lockout.recordingFailure(state, at: start.addingTimeInterval(3600 + 12 * 3600 - 1))
        #expect(close.locked && close.state.consecutiveFailures == 3, "eleven hours after the first failure but not twelve after the last")
        let later = lockout.recordingFailure(state, at: start.addingTimeInterval(3600 + 12 * 3600))
        #expect(!later.locked && later.state.consecutiveFailures == 1)
        // A count left by a version that recorded no time is kept until a failure dates it.
        let undated = LockoutPolicy.State(consecutiveFailures: 2)
        #expect(lockout.recordingFailure(undated, at: start.addingTimeInterval(365 * 86_400)).locked)
    }
}
