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
/// read it (first copy, memory barrier, second copy, both equal, checksum right), with the
/// number of the connection that read it: equal headers prove "nothing committed" only while
/// one connection keeps the `-shm` attached (``LoopReader/commitStamp()``). PostgreSQL offers
/// no such value to a client without a round trip; there is none there.
public struct CommitStamp: Sendable, Equatable {
    /// Which connection of the engine read it: equal headers prove nothing across a close
    /// (``LoopReader/commitStamp()``).
    let connection: UInt64
    let header: Header

    /// The 48 bytes of SQLite's `WalIndexHdr`, as six words.
    struct Header: Sendable {
        var words: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0)

        static func same(_ lhs: Header, _ rhs: Header) -> Bool {
            lhs.words.0 == rhs.words.0 && lhs.words.1 == rhs.words.1 && lhs.words.2 == rhs.words.2
                && lhs.words.3 == rhs.words.3 && lhs.words.4 == rhs.words.4 && lhs.words.5 == rhs.words.5
        }
    }

    public static func == (lhs: CommitStamp, rhs: CommitStamp) -> Bool {
        lhs.connection == rhs.connection && Header.same(lhs.header, rhs.header)
    }
}
