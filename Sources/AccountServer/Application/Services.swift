import Accounts
import Logging
import ServiceLifecycle
import UnixSignals

/// Reloads the client CRLs on SIGHUP and whenever a file changes (polled), so that a
/// revocation published by the PKI applies without a restart.
struct CRLReloadService: Service {
    let store: CRLStore
    let pollInterval: Duration

    func run() async throws {
        guard !store.paths.isEmpty else {
            try? await gracefulShutdown()
            return
        }
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await _ in signals { store.reload(reason: "SIGHUP") }
                }
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: pollInterval)
                        if Task.isCancelled { break }
                        store.reloadIfChanged()
                    }
                }
                await group.waitForAll()
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
