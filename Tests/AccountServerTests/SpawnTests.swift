import Foundation
import Testing

/// The suite's own way of starting programs: a child must not inherit this process's
/// descriptors (a long-lived one would hold another test's socket, pipe or file open).
@Suite("Spawned programs")
struct SpawnTests {
    @Test func aSpawnedProgramInheritsNoDescriptor() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("inherited-\(UUID().uuidString)").path
        // Opened without O_CLOEXEC, as Foundation's and our own writers may do.
        let descriptor = open(path, O_CREAT | O_WRONLY, 0o600)
        try #require(descriptor >= 3)
        defer {
            close(descriptor)
            unlink(path)
        }
        let run = try await spawnAndWait("/bin/sh", ["-c", "ls /proc/$$/fd"])
        let inherited = String(decoding: run.output, as: UTF8.self).split(whereSeparator: \.isWhitespace).compactMap { Int($0) }
        #expect(run.status == 0)
        #expect(Set(inherited).isSubset(of: [0, 1, 2]), "descriptors in the child: \(inherited)")
    }
}
