import Foundation
import NIOCore
import Storage

/// The session facts forward-auth's check last read on one event loop (SQLite), kept with the
/// ``CommitStamp`` of the database when they were read, and used again only while the stamp
/// read for the new request is the same: nothing at all has been committed since, by any
/// connection of any process, so the query would return the same row.
///
/// What still changes without a commit is time. A kept row is used only while its session's
/// two deadlines, compared exactly as the query compares them (`absolute_expires_at > at`,
/// `last_seen_at > at - idle timeout`, in milliseconds), still hold; a kept "no live session"
/// stays true as time goes on (both conditions only become false), unless the clock went back
/// before the moment it was read, when the database is read again.
///
/// Bounded: any change of stamp empties it, and so does reaching ``capacity`` (a client
/// sending made-up cookies fills it with refusals; emptied, it costs one read per session).
/// Used only on its event loop's thread, hence `@unchecked Sendable`: ``HabilitationService``
/// hands a loop its own, and every use checks it is on that loop.
final class FactsMemo: @unchecked Sendable {
    static let capacity = 4096
    private let eventLoop: any EventLoop

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    enum Lookup {
        /// The database must be read.
        case read
        /// Nothing was committed since: no live session has this hash.
        case noSession
        /// Nothing was committed since, and the session is still within its deadlines.
        case live(HabilitationService.SessionFacts)
    }

    private struct Entry {
        var facts: HabilitationService.SessionFacts?
        var readAt: Int64
    }

    private var stamp: CommitStamp?
    private var entries: [String: Entry] = [:]

    func lookup(hash: String, stamp: CommitStamp, at: Date, idleTimeout: TimeInterval) -> Lookup {
        eventLoop.preconditionInEventLoop()
        guard stamp == self.stamp else {
            // A commit since the entries were read: none of them may be used again.
            entries.removeAll(keepingCapacity: true)
            self.stamp = stamp
            return .read
        }
        let atMilliseconds = at.epochMilliseconds
        guard let entry = entries[hash], atMilliseconds >= entry.readAt else { return .read }
        guard let facts = entry.facts else {
            counters.answeredFromMemo()
            return .noSession
        }
        guard facts.absoluteExpiresAt > atMilliseconds,
              facts.lastSeenMilliseconds > at.addingTimeInterval(-idleTimeout).epochMilliseconds else { return .read }
        counters.answeredFromMemo()
        return .live(facts)
    }

    /// Keeps what a read made at `at` returned, if `stamp` (read *before* that read) is still
    /// the memo's: a commit between the stamp and the read makes the next stamp differ, so the
    /// entry is never used.
    func keep(_ facts: HabilitationService.SessionFacts?, hash: String, stamp: CommitStamp, at: Date) {
        eventLoop.preconditionInEventLoop()
        guard stamp == self.stamp else { return }
        if entries.count >= Self.capacity { entries.removeAll(keepingCapacity: true) }
        entries[hash] = Entry(facts: facts, readAt: at.epochMilliseconds)
    }

    /// This loop's checks answered on the loop: from the memo, or by a read (metrics).
    let counters = LookupCounters()

    /// Entries kept now, and checks answered from the memo so far (tests).
    var count: Int { entries.count }
    var hits: Int { counters.counts.memo }
}
