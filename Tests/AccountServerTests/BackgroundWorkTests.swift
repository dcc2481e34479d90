@testable import AccountServer
import Logging
import ServiceLifecycle
import Synchronization
import Testing

/// The queue that runs reset requests after their answer: bounded, and drained on a graceful
/// shutdown (before the database closes) rather than cut.
@Suite("Work after the answer")
struct BackgroundWorkTests {
    @Test func aFullQueueRefusesAndAGracefulShutdownRunsWhatWasQueued() async throws {
        let bounded = BackgroundWork(capacity: 2, concurrency: 1)
        let nothing: @Sendable () async -> Void = {}
        let first = bounded.submit(nothing), second = bounded.submit(nothing), third = bounded.submit(nothing)
        #expect(first && second)
        #expect(!third, "the third does not fit")

        let work = BackgroundWork(capacity: 100, concurrency: 2)
        let done = Mutex(0)
        let job: @Sendable () async -> Void = {
            try? await Task.sleep(for: .milliseconds(20))
            done.withLock { $0 += 1 }
        }
        for _ in 0..<20 {
            let queued = work.submit(job)
            #expect(queued)
        }
        let group = ServiceGroup(services: [work], logger: Logger(label: "test"))
        let running = Task { try await group.run() }
        try await Task.sleep(for: .milliseconds(10))
        await group.triggerGracefulShutdown()
        try await running.value
        #expect(done.withLock { $0 } == 20, "everything queued ran before the service ended")
        let late = work.submit(nothing)
        #expect(!late, "closed after shutdown")
    }
}
