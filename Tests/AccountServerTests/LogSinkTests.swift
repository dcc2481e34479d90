import Foundation
import Testing

@testable import AccountServer

/// The log sink against a real pipe whose writing end is non-blocking, as a log reader (a
/// supervisor, `journald`'s stream, a shell pipe) can leave it: a reader that falls behind
/// must cost neither a line nor the start of the next one.
@Suite("Log lines through a pipe")
struct LogSinkTests {
    /// A pipe; its writing end non-blocking. Closed by the caller.
    static func nonBlockingPipe() throws -> (read: Int32, write: Int32) {
        var descriptors: [Int32] = [0, 0]
        guard pipe(&descriptors) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        _ = fcntl(descriptors[1], F_SETFL, fcntl(descriptors[1], F_GETFL) | O_NONBLOCK)
        return (descriptors[0], descriptors[1])
    }

    /// Everything readable from `descriptor` until its writing end is closed.
    static func readAll(_ descriptor: Int32) -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = read(descriptor, &chunk, chunk.count)
            if count > 0 { bytes += chunk[..<count]; continue }
            if count < 0 && errno == EINTR { continue }
            return bytes
        }
    }

    /// A line four times the pipe's capacity, and a reader that takes it in small bites: the
    /// writer meets a full pipe (EAGAIN) again and again, far more often than it would wait
    /// for a reader that takes nothing, and the line arrives whole, the next one after it.
    @Test func aSlowReaderGetsTheWholeLine() async throws {
        let (readEnd, writeEnd) = try Self.nonBlockingPipe()
        defer { close(readEnd) }
        let line = Array(String(repeating: "0123456789abcdef", count: 16_384).utf8) + [UInt8(ascii: "\n")]  // 256 KiB
        async let received = onDedicatedThread {
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 4_096)
            while true {
                let count = read(readEnd, &chunk, chunk.count)
                if count > 0 { bytes += chunk[..<count]; usleep(2_000); continue }
                if count < 0 && errno == EINTR { continue }
                return bytes
            }
        }
        let sink = LogLineSink(capturing: false, descriptor: writeEnd)
        try await onDedicatedThread { sink.write(line) }
        try await onDedicatedThread { sink.write(Array("next\n".utf8)) }
        close(writeEnd)
        let bytes = try await received
        let expected = line + Array("next\n".utf8)
        let firstDifference = zip(bytes, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset
        #expect(bytes.count == expected.count && firstDifference == nil,
                "\(bytes.count) bytes of \(expected.count), first difference at \(firstDifference.map(String.init) ?? "-")")
    }

    /// A reader that takes nothing for longer than the sink waits: the line is cut where the
    /// pipe was full, and as even its end could not be written then, the next line brings it,
    /// so that line still starts on a line of its own.
    @Test func aStuckReaderCutsALineAndTheNextStartsOnItsOwn() async throws {
        let (readEnd, writeEnd) = try Self.nonBlockingPipe()
        defer { close(readEnd) }
        let sink = LogLineSink(capturing: false, descriptor: writeEnd)
        let long = Array(String(repeating: "x", count: 1 << 20).utf8) + [UInt8(ascii: "\n")]  // more than any pipe holds
        try await onDedicatedThread { sink.write(long) }  // gives up after its 200 ms
        let stuck = try await onDedicatedThread { Self.drain(readEnd) }
        #expect(stuck > 0 && stuck < long.count - 1, "the pipe took part of the line: \(stuck) bytes")
        try await onDedicatedThread { sink.write(Array("after the stuck reader\n".utf8)) }
        close(writeEnd)
        let rest = try await onDedicatedThread { Self.readAll(readEnd) }
        #expect(String(decoding: rest, as: UTF8.self) == "\nafter the stuck reader\n", "\(rest.count) bytes: \(String(decoding: rest.prefix(80), as: UTF8.self))")
    }

    /// Reads what the pipe holds now (its writing end still open): the count.
    static func drain(_ descriptor: Int32) -> Int {
        _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
        defer { _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) & ~O_NONBLOCK) }
        var total = 0
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = read(descriptor, &chunk, chunk.count)
            if count > 0 { total += count; continue }
            if count < 0 && errno == EINTR { continue }
            return total
        }
    }
}
