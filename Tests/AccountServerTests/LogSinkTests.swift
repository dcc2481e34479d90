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
    /// writer meets a full pipe (EAGAIN) again and again, and the line arrives whole, the next
    /// one after it.
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
        sink.write(line)
        sink.write(Array("next\n".utf8))
        try await onDedicatedThread { sink.flush(timeout: .seconds(60)) }
        close(writeEnd)
        let bytes = try await received
        let expected = line + Array("next\n".utf8)
        let firstDifference = zip(bytes, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset
        #expect(bytes.count == expected.count && firstDifference == nil,
                "\(bytes.count) bytes of \(expected.count), first difference at \(firstDifference.map(String.init) ?? "-")")
        #expect(sink.droppedTotal == 0)
    }

    /// A reader that stops reading (a stalled `journald`, on a blocking descriptor as under
    /// systemd) never blocks the threads that log: past the sink's queue, lines are dropped
    /// whole and counted, and once the reader is back it reads every line that waited, in
    /// order, then how many were dropped, then what came after.
    @Test func aStuckReaderNeverBlocksTheThreadsThatLog() async throws {
        var descriptors: [Int32] = [0, 0]
        #expect(pipe(&descriptors) == 0)
        let (readEnd, writeEnd) = (descriptors[0], descriptors[1])
        defer { close(readEnd) }
        let sink = LogLineSink(capturing: false, descriptor: writeEnd, pendingLimit: 64 << 10)
        let total = 2_000
        let filler = String(repeating: "x", count: 1_000)
        // Nobody reads yet: the pipe (64 KiB) and the queue (64 KiB) fill up.
        let logged = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            for index in 0..<total { sink.write(Array("line \(index) \(filler)\n".utf8)) }
            logged.signal()
        }
        let returned = try await onDedicatedThread { logged.wait(timeout: .now() + 60) == .success }  // liveness only
        #expect(returned, "the logging thread was blocked by the reader")
        async let received = onDedicatedThread { Self.readAll(readEnd) }
        sink.write(Array("after the reader came back\n".utf8))
        try await onDedicatedThread { sink.flush(timeout: .seconds(60)) }
        close(writeEnd)
        let lines = String(decoding: try await received, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines.last == "", "the output ends with a whole line")
        let body = lines.dropLast()
        #expect(body.last == "after the reader came back", "\(body.last ?? "-")")
        // Each count stands where its lines would have been: the next line delivered is the
        // one after them.
        var next = 0, dropped = 0, notices = 0
        for line in body.dropLast() {
            if let match = line.firstMatch(of: /warning account-server: dropped=(\d+) log lines dropped: the log reader did not keep up$/) {
                next += Int(match.1)!
                dropped += Int(match.1)!
                notices += 1
            } else {
                #expect(line == "line \(next) \(filler)", "line \(next) expected, whole: \(line.prefix(40))")
                next += 1
            }
        }
        #expect(next == total && dropped > 0 && notices >= 1, "\(next) lines accounted for, \(dropped) dropped, in \(notices) notices")
        #expect(sink.droppedTotal == dropped)
    }

    /// Lines a descriptor refuses for good (here EBADF: a descriptor open for reading only)
    /// are counted as dropped, the count line itself not; and the writer then waits, instead
    /// of trying to say so again and again.
    @Test func linesLostToAWriteErrorAreCounted() async throws {
        let descriptor = open("/dev/null", O_RDONLY)
        #expect(descriptor >= 0)
        defer { close(descriptor) }
        let sink = LogLineSink(capturing: false, descriptor: descriptor)
        for index in 0..<3 { sink.write(Array("line \(index)\n".utf8)) }
        try await onDedicatedThread { sink.flush(timeout: .seconds(30)) }
        #expect(sink.droppedTotal == 3)
        sink.write(Array("one more\n".utf8))
        try await onDedicatedThread { sink.flush(timeout: .seconds(30)) }
        #expect(sink.droppedTotal == 4, "each line once; the counts that could not be written count nothing")
    }

    /// Lines logged in a burst after a quiet spell go out together: the writer, woken by the
    /// first, waits its batch window before it takes them, instead of a wake-up and a `write`
    /// per line (what made PUT slower at the `info` level).
    @Test func aBurstOfLinesIsWrittenInOneBatch() async throws {
        var descriptors: [Int32] = [0, 0]
        #expect(pipe(&descriptors) == 0)
        let (readEnd, writeEnd) = (descriptors[0], descriptors[1])
        defer { close(readEnd) }
        async let received = onDedicatedThread { Self.readAll(readEnd) }
        let sink = LogLineSink(capturing: false, descriptor: writeEnd, batchWindow: .seconds(1))
        sink.write(Array("first\n".utf8))
        try await onDedicatedThread { sink.flush(timeout: .seconds(30)) }
        let before = sink.batches
        // The writer now waits for a signal, as after any quiet spell.
        try await Task.sleep(for: .milliseconds(50))
        for index in 0..<100 { sink.write(Array("line \(index)\n".utf8)) }
        try await onDedicatedThread { sink.flush(timeout: .seconds(30)) }
        #expect(sink.batches - before == 1, "\(sink.batches - before) batches for a burst of 100 lines")
        close(writeEnd)
        let lines = String(decoding: try await received, as: UTF8.self).split(separator: "\n").map(String.init)
        #expect(lines == ["first"] + (0..<100).map { "line \($0)" })
    }
}
