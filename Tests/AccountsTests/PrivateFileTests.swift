import Accounts
import Foundation
import Storage
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite("Secret files: owner-only from their first byte")
struct PrivateFileTests {
    private func temporaryDirectory() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("private-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    private func mode(_ path: String) -> mode_t {
        var status = stat()
        return lstat(path, &status) == 0 ? status.st_mode & 0o777 : 0
    }

    /// A local user watching the folder must never see a secret file (or a temporary one on
    /// its way) readable by others: FileManager.createFile wrote it at the umask's mode and
    /// narrowed it after the rename, which this test saw as 0644 files.
    @Test func aWatcherNeverSeesASecretFileReadableByOthers() throws {
        let previous = umask(0o022)  // the usual umask, under which FileManager leaked
        defer { umask(previous) }
        let root = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let directory = root + "/state"
        let stop = Atomic<Bool>(false)
        let seen = Mutex<[String]>([])
        let watcher = Thread {
            while !stop.load(ordering: .relaxed) {
                for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
                    var status = stat()
                    if lstat(directory + "/" + name, &status) == 0, status.st_mode & 0o077 != 0 {
                        seen.withLock { $0.append("\(name) \(String(status.st_mode & 0o777, radix: 8))") }
                    }
                }
            }
        }
        watcher.start()
        var keys: Set<[UInt8]> = []
        for index in 0..<150 {
            keys.insert(try SecretBox.loadOrCreateKey(path: "\(directory)/secret-\(index).key"))
        }
        stop.store(true, ordering: .relaxed)
        Thread.sleep(forTimeInterval: 0.05)
        let leaked = seen.withLock { Set($0).sorted() }
        #expect(leaked.count == 0, "seen readable by others: \(leaked.prefix(5))")
        #expect(keys.count == 150 && keys.allSatisfy { $0.count == 32 })
        #expect(mode(directory) == 0o700, "a folder made for secrets is 0700")
        let names = try FileManager.default.contentsOfDirectory(atPath: directory)
        #expect(names.count == 150 && names.allSatisfy { $0.hasSuffix(".key") }, "no temporary file left: \(names.filter { !$0.hasSuffix(".key") })")
        #expect(names.allSatisfy { mode(directory + "/" + $0) == 0o600 })
    }

    @Test func aSecretKeyFileReadableByOthersIsRefused() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/secret.key"
        let key = try SecretBox.loadOrCreateKey(path: path)
        #expect(try SecretBox.loadOrCreateKey(path: path) == key, "read back, not replaced")
        chmod(path, 0o644)
        #expect(throws: SecretBoxError.self, "readable by others") { try SecretBox.loadOrCreateKey(path: path) }
        chmod(path, 0o660)
        #expect(throws: SecretBoxError.self, "writable by its group") { try SecretBox.loadOrCreateKey(path: path) }
        chmod(path, 0o640)
        #expect(try SecretBox.loadOrCreateKey(path: path) == key, "readable by a group of the server's: a mounted secret")
        // Readable by a group the server is not in: every member of it would read the key.
        // (Changing a file's group to one of no membership needs root: the suite runs as root.)
        if geteuid() == 0 {
            let foreign: gid_t = 65534
            #expect(!PrivateFile.isOwnGroup(foreign))
            #expect(chown(path, 0, foreign) == 0)
            #expect(throws: SecretBoxError.self, "readable by a foreign group") { try SecretBox.loadOrCreateKey(path: path) }
            chmod(path, 0o600)
            #expect(try SecretBox.loadOrCreateKey(path: path) == key, "the group does not matter when it cannot read")
            #expect(chown(path, 0, getegid()) == 0)
        }
        chmod(path, 0o600)
        #expect(try SecretBox.loadOrCreateKey(path: path) == key)
        // Through a symlink (how Kubernetes mounts secrets): the file it names is checked.
        let link = directory + "/linked.key"
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: path)
        #expect(try SecretBox.loadOrCreateKey(path: link) == key)
        chmod(path, 0o604)
        #expect(throws: SecretBoxError.self) { try SecretBox.loadOrCreateKey(path: link) }
        // Not a regular file.
        #expect(throws: SecretBoxError.self) { try SecretBox.loadOrCreateKey(path: directory) }
    }

    /// A creation finding the file there (another process created it first) keeps that file
    /// and says so: both processes then read the same complete key.
    @Test func aCreationFindingTheFileKeepsIt() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/token"
        #expect(try PrivateFile.create(path: path, contents: Array("first".utf8)))
        #expect(try !PrivateFile.create(path: path, contents: Array("second".utf8)))
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "first")
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory) == ["token"])
    }
}
