import Accounts
import Foundation
import Habilitation
import Storage
import Logging
import ServiceLifecycle
import UnixSignals

/// SIGHUP re-reads the server certificates and keys, the client CA bundle and the CRLs, in
/// that order, without closing a listener; CRL files are also polled for changes. Each
/// reload that fails keeps what was in force (and is counted in `/metrics`).
struct ReloadService: Service {
    let material: TLSMaterial
    let verifier: ClientCertificateVerifier
    let crlStore: CRLStore
    /// The proxy's certificate verifier (proxy mTLS), whose CA rotates with the rest.
    let proxyVerifier: ClientCertificateVerifier?
    let pollInterval: Duration
    let metrics: ServerMetrics
    let logger: Logger

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await _ in signals { reloadAll() }
                }
                let polled = [crlStore, proxyVerifier?.crlStore].compactMap { $0 }.filter { !$0.paths.isEmpty }
                if !polled.isEmpty {
                    group.addTask {
                        while !Task.isCancelled {
                            try? await Task.sleep(for: pollInterval)
                            if Task.isCancelled { break }
                            for store in polled { store.reloadIfChanged() }
                        }
                    }
                }
                await group.waitForAll()
            }
        }
    }

    func reloadAll() {
        if let generation = material.reload(reason: "SIGHUP") {
            metrics.reload("tls", ok: true)
            verifier.replaceTrustRoots(generation.clientTrustRoots)
            crlStore.replaceIssuers(generation.clientTrustRoots)
            if let proxyVerifier {
                proxyVerifier.replaceTrustRoots(generation.proxyTrustRoots)
                proxyVerifier.crlStore.replaceIssuers(generation.proxyTrustRoots)
                if !proxyVerifier.crlStore.paths.isEmpty { _ = proxyVerifier.crlStore.reload(reason: "SIGHUP") }
            }
        } else {
            metrics.reload("tls", ok: false)
        }
        if !crlStore.paths.isEmpty {
            metrics.reload("crl", ok: crlStore.reload(reason: "SIGHUP"))
        }
    }
}

/// Deletes, every `interval`, what sign-in leaves behind once it is of no use (spent or
/// expired intents and flows, ended sessions, dead reset links, old outbox rows), so
/// unauthenticated traffic cannot grow the database without bound, then scrubs the database's
/// log (``Retention``). The audit trail is never purged. Also keys legacy recovery codes an older instance stored meanwhile.
struct RetentionService: Service {
    let purge: Retention
    let credentials: CredentialStore
    let retention: TimeInterval
    let interval: Duration
    let logger: Logger

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do {
                    let pass = try await purge.purge(retention: retention)
                    if let log = pass.log {
                        logger.info(pass.deleted > 0 ? "purged expired sign-in rows" : "database log scrubbed (owed by the last pass)", metadata: ["rows": "\(pass.deleted)", "database_log": "\(log.rawValue)"])
                        if log == .heldBack || log == .failed {
                            var metadata: Logger.Metadata = ["database_log": "\(log.rawValue)"]
                            if let failure = pass.failure { metadata["error"] = "\(failure)" }
                            logger.notice("the database's log was not truncated after the purge: earlier copies of the purged rows stay in its -wal file; the next pass tries again",
                                          metadata: metadata)
                        }
                    }
                    // Codes an instance of a version of before 2026-12 stored as plain SHA-256
                    // after this one started (a rolling upgrade): keyed within an interval.
                    let rekeyed = try await credentials.rekeyLegacyRecoveryCodes()
                    if rekeyed > 0 { logger.notice("keyed recovery codes stored as plain SHA-256 by an earlier version", metadata: ["recovery_codes": "\(rekeyed)"]) }
                } catch {
                    logger.error("purge failed; will retry", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: interval)
            }
        }
    }
}

/// Owns the argon2 thread pool's lifetime: stops it after the servers have drained.
struct PasswordHasherService: Service {
    let hasher: PasswordHasher

    func run() async throws {
        try? await gracefulShutdown()
        try await hasher.shutdown()
    }
}

/// Closes the database (PostgreSQL: its connections and threads) after every listener has
/// drained: it is registered before them, and services stop in reverse order.
struct DatabaseService: Service {
    let database: AccountDatabase
    let logger: Logger

    func run() async throws {
        try? await gracefulShutdown()
        await database.close()
        logger.notice("database closed")
    }
}

// swift-service-lifecycle names a service by `"\(service)"` in its debug lines: a struct's
// default description lists its stored properties, and a key, token or secret ever held by
// one would be written to the log byte for byte. Each service is named instead.
extension ReloadService: CustomStringConvertible { var description: String { "ReloadService" } }
extension RetentionService: CustomStringConvertible { var description: String { "RetentionService" } }
extension PasswordHasherService: CustomStringConvertible { var description: String { "PasswordHasherService" } }
extension DatabaseService: CustomStringConvertible { var description: String { "DatabaseService" } }
extension MailerService: CustomStringConvertible { var description: String { "MailerService" } }
extension ProviderService: CustomStringConvertible { var description: String { "ProviderService" } }
extension UpstreamClientService: CustomStringConvertible { var description: String { "UpstreamClientService" } }
