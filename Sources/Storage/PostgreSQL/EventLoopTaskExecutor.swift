import NIOConcurrencyHelpers
import NIOCore
import PostgresNIO

/// Runs a task's jobs on one event loop. postgres-nio answers a connection's statements on
/// that connection's loop; a task preferring that loop resumes there, where the answer
/// arrived, instead of being handed to a thread of the cooperative pool and back. Measured
/// on PostgreSQL PUTs (docs/performance.md): each statement cost two to three thread
/// switches more before.
final class EventLoopTaskExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        eventLoop.execute { job.runSynchronously(on: executor) }
    }
}

/// One executor per event loop, kept as long as the engine: a task's preferred executor
/// must outlive the task, and the loops are few and fixed.
final class EventLoopTaskExecutors: Sendable {
    private let executors = NIOLockedValueBox<[ObjectIdentifier: EventLoopTaskExecutor]>([:])
    /// See ``PostgresEngine/statementDeadline``.
    let statementDeadline: Duration

    init(statementDeadline: Duration) {
        self.statementDeadline = statementDeadline
    }

    func executor(for eventLoop: any EventLoop) -> EventLoopTaskExecutor {
        executors.withLockedValue { executors in
            let key = ObjectIdentifier(eventLoop)
            if let executor = executors[key] { return executor }
            let executor = EventLoopTaskExecutor(eventLoop)
            executors[key] = executor
            return executor
        }
    }

    /// `body`'s result on `eventLoop`'s future: `body` runs there, and so does every
    /// continuation of it. `body` may arm the call's statement deadline once it holds a
    /// connection (``LoopCall/armDeadline(closing:)``).
    func run<T: Sendable>(on eventLoop: any EventLoop, deadline: Duration? = nil,
                          _ body: @escaping @Sendable (LoopCall<T>) async throws -> T) -> EventLoopFuture<T> {
        let call = LoopCall<T>(promise: eventLoop.makePromise(of: T.self), deadline: deadline ?? statementDeadline)
        let executor = executor(for: eventLoop)
        Task(executorPreference: executor) {
            // Held by the task itself: a task outliving the engine (a statement never
            // answered) still has its executor.
            _ = executor
            do {
                call.complete(.success(try await body(call)))
            } catch {
                call.complete(.failure(error))
            }
        }
        return call.promise.futureResult
    }
}

/// One call run by ``EventLoopTaskExecutors/run(on:_:)``: its result, given once, by the call
/// or by its deadline, whichever comes first.
///
/// The deadline answers the caller itself rather than relying on the connection's close to
/// fail the statement: postgres-nio drops a statement written to a channel that has already
/// closed without ever answering it, so a caller waiting on that statement alone would wait
/// forever.
final class LoopCall<T: Sendable>: Sendable {
    let promise: EventLoopPromise<T>
    private let completed = NIOLockedValueBox(false)
    private let deadline: Duration

    init(promise: EventLoopPromise<T>, deadline: Duration) {
        self.promise = promise
        self.deadline = deadline
    }

    func complete(_ result: Result<T, any Error>) {
        let first = completed.withLockedValue { completed in
            defer { completed = true }
            return !completed
        }
        if first { promise.completeWith(result) }
    }

    /// From now, if the call has not ended within the statement deadline, `connection` is
    /// closed (the pool replaces it) and the call fails as unavailable. Cancel the returned
    /// timer when the statement has answered. The timer is on the call's loop, where the
    /// caller runs: arming and cancelling it wakes no thread.
    func armDeadline(closing connection: PostgresConnection) -> Scheduled<Void> {
        let deadline = self.deadline
        return promise.futureResult.eventLoop.scheduleTask(in: .init(deadline)) {
            connection.close().whenComplete { _ in }
            self.complete(.failure(StorageError.unavailable("the database did not answer within \(deadline)")))
        }
    }
}
