import Synchronization

/// How forward-auth's session lookups were answered, since the process started (the metrics
/// `account_server_forward_auth_session_lookups_total` and
/// `account_server_forward_auth_database_statements_total`, docs/operations.md).
///
/// Operators read two things from it: on SQLite, the share of checks the memo answered
/// (``FactsMemo``: it falls when writes are frequent, as every commit empties it); on
/// PostgreSQL, the checks each statement carried (``FactsBatcher``).
public struct ForwardAuthCounts: Sendable, Equatable {
    /// Checks answered from the memo, without a read (SQLite).
    public var memo: Int = 0
    /// Checks answered by a read of the database, alone or in a batch.
    public var database: Int = 0
    /// Statements those reads took (fewer than ``database`` when batched).
    public var statements: Int = 0

    public init(memo: Int = 0, database: Int = 0, statements: Int = 0) {
        self.memo = memo
        self.database = database
        self.statements = statements
    }
}

/// The counters of one event loop's memo or batcher. Written on that loop only, read by a
/// metrics scrape from any thread: relaxed atomics, each on one loop's object, so the hot
/// path pays an uncontended add and no lock.
final class LookupCounters: Sendable {
    private let memo = Atomic<Int>(0)
    private let database = Atomic<Int>(0)
    private let statements = Atomic<Int>(0)

    func answeredFromMemo() { memo.wrappingAdd(1, ordering: .relaxed) }

    /// One statement, answering `checks` checks.
    func read(checks: Int) {
        database.wrappingAdd(checks, ordering: .relaxed)
        statements.wrappingAdd(1, ordering: .relaxed)
    }

    var counts: ForwardAuthCounts {
        ForwardAuthCounts(memo: memo.load(ordering: .relaxed), database: database.load(ordering: .relaxed),
                          statements: statements.load(ordering: .relaxed))
    }
}

extension ForwardAuthCounts {
    static func + (lhs: ForwardAuthCounts, rhs: ForwardAuthCounts) -> ForwardAuthCounts {
        ForwardAuthCounts(memo: lhs.memo + rhs.memo, database: lhs.database + rhs.database, statements: lhs.statements + rhs.statements)
    }
}
