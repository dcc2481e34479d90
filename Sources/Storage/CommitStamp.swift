/// A value that changes whenever anything is committed to the database, by any connection of
/// any process, read without starting a transaction.
///
/// Two equal stamps read at two moments mean nothing was committed in between, so a read made
/// after the first would return now what it returned then. That is what lets forward-auth's
/// check reuse the answer it read for a session instead of reading it again, and stay as fresh
/// as a read: the stamp is read on every request, and any commit at all (a withdrawal, a
/// suspension, a revocation, but also any unrelated write) makes the next request read again.
///
/// On SQLite it is the WAL-index header (`https://sqlite.org/walformat.html`, "The WAL-Index
/// Header"): 48 bytes in the `-shm` file that every writer rewrites when it commits (its change
/// counter, last frame, salts and checksum), kept twice and read the way SQLite's own readers
/// read it (first copy, memory barrier, second copy, both equal). PostgreSQL offers no such
/// value to a client without a round trip; there is none there.
public struct CommitStamp: Sendable, Equatable {
    let words: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)

    init(words: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)) {
        self.words = words
    }

    public static func == (lhs: CommitStamp, rhs: CommitStamp) -> Bool {
        lhs.words.0 == rhs.words.0 && lhs.words.1 == rhs.words.1 && lhs.words.2 == rhs.words.2
            && lhs.words.3 == rhs.words.3 && lhs.words.4 == rhs.words.4 && lhs.words.5 == rhs.words.5
    }
}
