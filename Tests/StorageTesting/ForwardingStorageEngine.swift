import NIOCore
import Storage

/// A test engine that wraps another and passes every call on to it, except those it declares
/// itself: a test changes one behaviour (a commit racing a read, a failing scrub, work
/// interleaved in a write) without copying the rest.
public protocol ForwardingStorageEngine: StorageEngine {
    /// The engine every call the wrapper does not declare goes to.
    var forwardedTo: any StorageEngine { get }
}

extension ForwardingStorageEngine {
    public var kind: StorageKind { forwardedTo.kind }
    public func read<T: Sendable>(_ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T { try await forwardedTo.read(block) }
    public func readBetweenWrites<T: Sendable>(_ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T {
        try await forwardedTo.readBetweenWrites(block)
    }
    public func pointRead<T: Sendable>(_ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T {
        try await forwardedTo.pointRead(block)
    }
    public func write<T: Sendable>(_ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T { try await forwardedTo.write(block) }
    public func loopRead(sql: String, arguments: [SQLValue], on eventLoop: any EventLoop) -> EventLoopFuture<[SQLRow]> {
        forwardedTo.loopRead(sql: sql, arguments: arguments, on: eventLoop)
    }
    public func loopReadNow(sql: String, arguments: [SQLValue], on eventLoop: any EventLoop) throws -> [SQLRow]? {
        try forwardedTo.loopReadNow(sql: sql, arguments: arguments, on: eventLoop)
    }
    public func loopCommitStamp(on eventLoop: any EventLoop) -> CommitStamp? { forwardedTo.loopCommitStamp(on: eventLoop) }
    public func migrate(_ schema: Schema) async throws { try await forwardedTo.migrate(schema) }
    public var connectionCounts: DatabaseConnectionCounts? { forwardedTo.connectionCounts }
    public func appliedMigrations() async throws -> [String] { try await forwardedTo.appliedMigrations() }
    public func compact() async throws { try await forwardedTo.compact() }
    public func scrubLog() async throws -> LogScrub { try await forwardedTo.scrubLog() }
    public func close() async { await forwardedTo.close() }
}
