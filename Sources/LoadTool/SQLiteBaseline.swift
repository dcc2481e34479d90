import Foundation
import GRDB

/// The floor under every INT_R02 write: what SQLite itself costs for one durable commit on
/// this disk, with the server's settings (WAL journal, `synchronous=FULL`, so each commit
/// fsyncs the WAL), through the same GRDB layer.
enum SQLiteBaseline {
    /// Commit latencies in milliseconds, after 1 s of warm-up.
    static func run(directory: URL, duration: Double) throws -> [Double] {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var configuration = Configuration()
        configuration.prepareDatabase { db in try db.execute(sql: "PRAGMA synchronous = FULL") }
        let pool = try DatabasePool(path: directory.appendingPathComponent("baseline.sqlite").path, configuration: configuration)
        try pool.write { db in
            try db.execute(sql: "CREATE TABLE row (id INTEGER PRIMARY KEY, account TEXT NOT NULL, payload TEXT NOT NULL) STRICT")
        }
        let payload = String(repeating: "x", count: 400)
        let warm = ContinuousClock.now + .seconds(1)
        let deadline = warm + .milliseconds(Int(duration * 1000))
        var samples: [Double] = []
        while ContinuousClock.now < deadline {
            let start = ContinuousClock.now
            try pool.write { db in
                try db.execute(sql: "INSERT INTO row (account, payload) VALUES (?, ?)", arguments: [UUID().uuidString, payload])
            }
            if start > warm {
                let elapsed = ContinuousClock.now - start
                samples.append(Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15)
            }
        }
        return samples
    }
}
