@testable import Accounts
import Foundation
@testable import Storage
import StorageTesting
import Testing

/// The audit trail's retention (``AuditArchive``), on the run's engine: a prefix of the trail
/// removed by the schema owner with a record of it, the append-only guard back in place for
/// everyone, and nothing removed when the range changed or the role may not.
@Suite("Audit archive")
struct AuditArchiveTests {
    static let day: TimeInterval = 86_400
    static let origin = Date(timeIntervalSince1970: 1_700_000_000)

    static func event(_ index: Int) -> AuditEvent {
        AuditEvent(at: origin.addingTimeInterval(Double(index) * day), surface: "admin", action: "test-\(index)", outcome: "ok",
                   actor: AuditActor(subject: "cli:test"), requestID: nil, identifier: nil, accountID: "account-\(index % 2)", changes: [], detail: nil)
    }

    /// The owner's database (migrated by it) and the runtime role's on the same data.
    static func databases() async throws -> (owner: AccountDatabase, runtime: AccountDatabase) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("audit-archive-\(UUID().uuidString)")
        let runtimeArgument = try await TestStore.argument(in: directory)
        let runtime = try await TestStore.open(runtimeArgument, poolSize: 1)
        let owner = try await TestStore.open(try TestStore.ownerArgument(of: runtimeArgument), poolSize: 1)
        return (owner, runtime)
    }

    static func deletionIsRefused(_ database: AccountDatabase) async -> Bool {
        do {
            try await database.write { db in try db.execute(sql: "DELETE FROM audit_event") }
            return false
        } catch {
            return "\(error)".contains("append-only") || "\(error)".contains("permission denied")
        }
    }

    @Test func aPrefixOfTheTrailIsRemovedWithARecordAndTheGuardStays() async throws {
        let (owner, runtime) = try await Self.databases()
        try await runtime.write { db in for index in 0..<5 { try AuditLog().append(Self.event(index), in: db) } }
        let archive = AuditArchive(database: owner)
        #expect(try await archive.range(before: Self.origin) == nil, "nothing is older than the first event")
        let range = try #require(try await archive.range(before: Self.origin.addingTimeInterval(2.5 * Self.day)))
        #expect(range.count == 3 && range.lastSeq - range.firstSeq == 2, "\(range)")
        var exported: [String] = []
        try await archive.forEachEvent(in: range, pageSize: 2) { exported.append($0.action) }
        #expect(exported == ["test-0", "test-1", "test-2"])

        // A range that no longer holds what was exported: nothing removed, guard in place.
        var stale = range
        stale.count = 2
        await #expect(throws: AuditArchive.Refusal.rangeChanged(expected: 2, found: 3)) {
            try await archive.remove(stale, record: Self.event(9))
        }
        #expect(try await AuditArchive(database: runtime).range(before: .distantFuture)?.count == 5)

        #expect(try await archive.mayRemove())
        try await archive.remove(range, record: Self.event(9))
        let left = try await runtime.read { db in try AuditLog().events(in: db) }
        #expect(left.map(\.action) == ["test-3", "test-4", "test-9"], "\(left.map(\.action))")
        #expect((left.last?.seq ?? 0) > (left.first?.seq ?? 0), "the record goes after the events kept")
        // The guard is back for the owner and the runtime role (and the server keeps appending).
        #expect(await Self.deletionIsRefused(owner))
        #expect(await Self.deletionIsRefused(runtime))
        try await runtime.write { db in try AuditLog().append(Self.event(10), in: db) }
        #expect(try await runtime.read { db in try AuditLog().events(in: db) }.count == 4)
        await owner.close()
        await runtime.close()
    }

    /// Never an event dated after the cut-off: the prefix stops before the first younger
    /// event, and an old-dated event after it (a wrong clock) stays with everything after it.
    @Test func theRangeStopsAtTheFirstYoungerEvent() async throws {
        let (owner, runtime) = try await Self.databases()
        try await runtime.write { db in for index in [0, 1, 5, 2, 6] { try AuditLog().append(Self.event(index), in: db) } }
        let archive = AuditArchive(database: owner)
        let range = try #require(try await archive.range(before: Self.origin.addingTimeInterval(3 * Self.day)))
        #expect(range.count == 2 && range.newest == Self.origin.addingTimeInterval(Self.day), "\(range)")
        try await archive.remove(range, record: Self.event(9))
        #expect(try await runtime.read { db in try AuditLog().events(in: db) }.map(\.action) == ["test-5", "test-2", "test-6", "test-9"])
        #expect(try await archive.range(before: Self.origin) == nil)
        await owner.close()
        await runtime.close()
    }

    /// On PostgreSQL the runtime role may not remove archived events: said before any export,
    /// and refused by the database if tried anyway, nothing removed.
    @Test(.enabled(if: TestStore.kind == .postgres)) func theRuntimeRoleMayNotRemove() async throws {
        let (owner, runtime) = try await Self.databases()
        try await runtime.write { db in for index in 0..<3 { try AuditLog().append(Self.event(index), in: db) } }
        let archive = AuditArchive(database: runtime)
        #expect(try await !archive.mayRemove())
        let range = try #require(try await archive.range(before: .distantFuture))
        do {
            try await archive.remove(range, record: Self.event(9))
            Issue.record("the runtime role removed audit events")
        } catch let error as StorageError {
            #expect("\(error)".contains("42501") || "\(error)".contains("owner"), "\(error)")
        }
        #expect(try await runtime.read { db in try AuditLog().events(in: db) }.count == 3)
        #expect(await Self.deletionIsRefused(owner))
        await owner.close()
        await runtime.close()
    }
}
