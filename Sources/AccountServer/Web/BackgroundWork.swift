import ServiceLifecycle

/// Work run after the answer it belongs to (the reset requests): a bounded queue drained by
/// a few tasks. It is a service of the application, stopped after the web listener (services
/// stop in reverse order) and before the database: on a graceful shutdown what was queued
/// still runs. A full queue drops the work (logged): the answer, given already, is the same.
final class BackgroundWork: Service, Sendable {
    private let stream: AsyncStream<@Sendable () async -> Void>
    private let continuation: AsyncStream<@Sendable () async -> Void>.Continuation
    let concurrency: Int

    init(capacity: Int, concurrency: Int) {
        (stream, continuation) = AsyncStream.makeStream(of: (@Sendable () async -> Void).self, bufferingPolicy: .bufferingOldest(capacity))
        self.concurrency = concurrency
    }

    /// Queues `work`; false when the queue is full (or closed) and the work was dropped.
    func submit(_ work: @escaping @Sendable () async -> Void) -> Bool {
        if case .enqueued = continuation.yield(work) { return true }
        return false
    }

    func run() async {
        let continuation = self.continuation
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                var running = 0
                for await work in stream {
                    if running >= concurrency {
                        await group.next()
                        running -= 1
                    }
                    group.addTask { await work() }
                    running += 1
                }
            }
        } onGracefulShutdown: {
            continuation.finish()  // what is queued is still delivered, then the loop ends
        }
    }
}
