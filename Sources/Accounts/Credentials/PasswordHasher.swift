import CArgon2
import Foundation
import NIOPosix
import Synchronization

/// argon2id cost parameters. The defaults are OWASP's minimum (m=19 MiB, t=2, p=1); raise
/// them on a bigger machine, as each hash costs `memoryKiB` of RAM for its duration.
public struct Argon2Parameters: Sendable, Equatable {
    public var memoryKiB: UInt32
    public var iterations: UInt32
    public var parallelism: UInt32

    /// Less memory or fewer passes than `other`: cheaper to attack.
    public func isWeaker(than other: Argon2Parameters) -> Bool {
        memoryKiB < other.memoryKiB || iterations < other.iterations
    }

    public init(memoryKiB: UInt32 = 19 * 1024, iterations: UInt32 = 2, parallelism: UInt32 = 1) {
        self.memoryKiB = memoryKiB
        self.iterations = iterations
        self.parallelism = parallelism
    }

    public static let owaspMinimum = Argon2Parameters()
}

/// Why hashing failed (libargon2's own message; never includes the password).
public struct PasswordHashingError: Error, Sendable, CustomStringConvertible {
    public var description: String
}

/// argon2id through libargon2, on a dedicated bounded thread pool: a hash takes tens of
/// milliseconds of CPU and memory, which must never run on an event loop, and no more hashes
/// than `threads` may run at once (the rest wait in the pool's queue).
public final class PasswordHasher: Sendable {
    public let parameters: Argon2Parameters
    private let pool: NIOThreadPool
    private let pending = Atomic<Int>(0)
    /// Hashes waiting or running that were asked with an admission limit.
    private let limited = Atomic<Int>(0)

    /// Starts `threads` worker threads. Call ``shutdown()`` when done.
    public init(parameters: Argon2Parameters = .owaspMinimum, threads: Int = ProcessInfo.processInfo.activeProcessorCount) {
        self.parameters = parameters
        self.pool = NIOThreadPool(numberOfThreads: max(1, threads))
        self.pool.start()
    }

    /// Hashes waiting or running: the argon2 queue depth operators watch.
    public var queueDepth: Int { pending.load(ordering: .relaxed) }

    /// The parameters a PHC string was made with (`$argon2id$v=19$m=…,t=…,p=…$…`).
    public static func parameters(of encoded: String) -> Argon2Parameters? {
        let fields = encoded.split(separator: "$")
        guard fields.count >= 4, fields[0] == "argon2id" else { return nil }
        var values: [Substring: UInt32] = [:]
        for pair in fields[2].split(separator: ",") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, let value = UInt32(parts[1]) else { return nil }
            values[parts[0]] = value
        }
        guard let memory = values["m"], let iterations = values["t"], let parallelism = values["p"] else { return nil }
        return Argon2Parameters(memoryKiB: memory, iterations: iterations, parallelism: parallelism)
    }

    /// Thrown instead of queueing when `admittingUpTo` hashes are already waiting or running.
    public struct Busy: Error, Equatable {}

    /// Counts this hash in the queue, or refuses it when that would pass `limit`: one atomic
    /// step, so requests arriving together cannot all see room and all queue.
    /// Only hashes asked with a limit count toward it (the web surface's): the SAS's creates,
    /// which never wait for room, do not push regulators' sign-ins to 503.
    private func admit(_ limit: Int?) throws(Busy) {
        if let limit {
            let depth = limited.add(1, ordering: .relaxed).newValue
            if depth > limit {
                limited.subtract(1, ordering: .relaxed)
                throw Busy()
            }
        }
        pending.add(1, ordering: .relaxed)
    }

    private func release(_ limit: Int?) {
        pending.subtract(1, ordering: .relaxed)
        if limit != nil { limited.subtract(1, ordering: .relaxed) }
    }

    /// Hashes `password` with a fresh 16-byte salt; returns the PHC-encoded string
    /// (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`). With `limit`, throws ``Busy`` rather
    /// than wait behind that many hashes.
    public func hash(_ password: [UInt8], admittingUpTo limit: Int? = nil) async throws -> String {
        try admit(limit)
        defer { release(limit) }
        let parameters = self.parameters
        return try await pool.runIfActive {
            try Self.hashNow(password, parameters: parameters)
        }
    }

    /// Which of `candidates` (the first that does) matches `encoded`, checked in order as one
    /// job (one admission: a check of two forms of a password is not half admitted), each in
    /// constant time (libargon2 compares in constant time).
    public func verifyAny(_ candidates: [[UInt8]], encoded: String, admittingUpTo limit: Int? = nil) async throws -> Int? {
        try admit(limit)
        defer { release(limit) }
        return try await pool.runIfActive {
            // Every candidate checked, even past a match: the time taken depends on what was
            // typed, never on which form of it is right (stopping at the first match would
            // tell a right normalised form from a wrong one, even on a locked account, where
            // the answer itself says nothing).
            candidates.map { Self.verifyNow($0, encoded: encoded) }.firstIndex(of: true)
        }
    }

    public func shutdown() async throws {
        try await pool.shutdownGracefully()
    }

    /// The synchronous hash, for benchmarks' baselines and the thread pool.
    public static func hashNow(_ password: [UInt8], parameters: Argon2Parameters) throws -> String {
        var salt = [UInt8](repeating: 0, count: 16)
        var generator = SystemRandomNumberGenerator()
        for index in salt.indices { salt[index] = generator.next() }
        let hashLength = 32
        let encodedLength = argon2_encodedlen(parameters.iterations, parameters.memoryKiB, parameters.parallelism,
                                              UInt32(salt.count), UInt32(hashLength), Argon2_id)
        var encoded = [CChar](repeating: 0, count: encodedLength)
        let status = password.withUnsafeBytes { passwordBytes in
            salt.withUnsafeBytes { saltBytes in
                argon2id_hash_encoded(parameters.iterations, parameters.memoryKiB, parameters.parallelism,
                                      passwordBytes.baseAddress, passwordBytes.count,
                                      saltBytes.baseAddress, saltBytes.count,
                                      hashLength, &encoded, encodedLength)
            }
        }
        guard status == ARGON2_OK.rawValue else {
            throw PasswordHashingError(description: String(cString: argon2_error_message(status)))
        }
        return String(decoding: encoded.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public static func verifyNow(_ password: [UInt8], encoded: String) -> Bool {
        let status = password.withUnsafeBytes { passwordBytes in
            argon2id_verify(encoded, passwordBytes.baseAddress, passwordBytes.count)
        }
        return status == ARGON2_OK.rawValue
    }
}

/// Generates the password an account is created with: 256 bits from the system CSPRNG
/// (getrandom), base64url-encoded. Nobody ever sees it; the regulator sets their own.
public enum PasswordGenerator {
    public static func generate() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        var bytes = [UInt8](repeating: 0, count: 32)
        for index in bytes.indices { bytes[index] = generator.next() }
        let text = Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
        return Array(text.utf8)
    }
}
