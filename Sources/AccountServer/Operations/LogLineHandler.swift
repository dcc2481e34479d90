import Accounts
import Foundation
import Logging
import Synchronization

/// The server's log handler: one event per line on standard error, in one of two formats.
///
/// - `text` (default): `2026-11-29T23:19:16.123Z notice account-server: key=value … message`,
///   a value in double quotes when it holds a space, `=` or `"`.
///   Log lines carry client-supplied text (certificate subjects, identifiers, user agents,
///   e-mail addresses); a subject holding CR/LF would otherwise start a forged line that a
///   log reader takes for the server's own, so every control character, the backslash and the
///   Unicode line separators are written as escapes (`\n`, `\r`, `\u{85}`…) in the message
///   and in every metadata key and value.
/// - `json`, for log shippers: `{"ts":…,"level":…,"label":…,"msg":…, <metadata>…}`. Metadata
///   keys are flattened to the top level (`request_id`, `account_id`, `client_subject`…); a key
///   that collides with a fixed field is prefixed with `meta_`. JSON escapes by construction.
struct LogLineHandler: LogHandler {
    enum Format: String, Sendable { case text, json }

    /// The command-line tools' logger (`migrate`, `migrate-store`, `admin`, `audit`): the same
    /// escaping as the server's (a database's error text can hold anything), on standard error.
    static func toolLogger(_ label: String, level: Logger.Level = .info) -> Logger {
        var logger = Logger(label: label) { LogLineHandler(label: $0, format: .text) }
        logger.logLevel = level
        return logger
    }

    let label: String
    let format: Format
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info
    var metadataProvider: Logger.MetadataProvider?
    private let sink: LogLineSink

    init(label: String, format: Format, sink: LogLineSink = .standardError) {
        self.label = label
        self.format = format
        self.sink = sink
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { $1 } }
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        let source = event.level >= .error ? "\(event.file):\(event.line)" : nil
        let line = Self.render(level: event.level, label: label, message: event.message.description, metadata: merged, source: source, format: format)
        if event.level == .critical { sink.writeAndWait(line, format: format) } else { sink.write(line, format: format) }
    }

    /// One line, `\n` included, in `format`.
    static func render(level: Logger.Level, label: String, message: String, metadata: Logger.Metadata, source: String?, format: Format) -> [UInt8] {
        let sorted = metadata.sorted(by: { $0.key < $1.key })
        switch format {
        case .text:
            var line = AuditLog.timestamp(Date()) + " " + level.rawValue + " " + Self.escaped(label) + ":"
            for (key, value) in sorted {
                line += " " + Self.escaped(key) + "=" + Self.quoted(Self.escaped(Self.bounded(Self.text(value))))
            }
            line += " " + Self.escaped(Self.bounded(message))
            if let source { line += " (\(source))" }
            return Array(line.utf8) + [0x0A]
        case .json:
            var object: JSONObject = [
                "ts": .string(AuditLog.timestamp(Date())),
                "level": .string(level.rawValue),
                "label": .string(label),
                "msg": .string(Self.bounded(message)),
            ]
            for (key, value) in sorted {
                let name = object[key] == nil ? key : "meta_" + key
                object[name] = Self.json(value)
            }
            if let source { object["source"] = .string(source) }
            return JSONWriter().encode(.object(object)) + [0x0A]
        }
    }

    static func text(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let text): return text
        case .stringConvertible(let convertible): return convertible.description
        case .array(let values): return "[" + values.map(text).joined(separator: ", ") + "]"
        case .dictionary(let dictionary): return "[" + dictionary.sorted { $0.key < $1.key }.map { "\($0.key): \(text($0.value))" }.joined(separator: ", ") + "]"
        }
    }

    static func json(_ value: Logger.Metadata.Value) -> JSONValue {
        switch value {
        case .string(let text): return .string(bounded(text))
        case .stringConvertible(let convertible): return .string(bounded(convertible.description))
        case .array(let values): return .array(values.map(json))
        case .dictionary(let dictionary): return .object(JSONObject(dictionary.sorted { $0.key < $1.key }.map { JSONMember($0.key, json($0.value)) }))
        }
    }

    /// Longest message or metadata value written whole, in Unicode scalars.
    static let valueLimit = 2_048

    /// `text` cut to ``valueLimit`` scalars, with how much was left out: values can come from
    /// clients (a certificate subject, a refused token's header) and one request must not
    /// write a 48 KB line (log volume, shippers that split or drop long lines).
    static func bounded(_ text: String) -> String {
        let scalars = text.unicodeScalars
        guard scalars.count > valueLimit else { return text }
        var out = String(String.UnicodeScalarView(scalars.prefix(valueLimit)))
        out += "…[\(scalars.count - valueLimit) more characters]"
        return out
    }

    /// A value in double quotes (inner quotes escaped) when it holds a space, `=` or `"`: a
    /// certificate subject such as `CN=x reason=ok` must not read as a second field.
    static func quoted(_ value: String) -> String {
        guard value.isEmpty || value.contains(where: { $0 == " " || $0 == "=" || $0 == "\"" }) else { return value }
        return "\"" + value.replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }

    /// `text` with nothing that could end the line or be mistaken for an escape.
    static func escaped(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: needsEscape) else { return text }
        var out = ""
        out.reserveCapacity(text.utf8.count + 8)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\\": out += "\\\\"
            case _ where needsEscape(scalar): out += "\\u{" + String(scalar.value, radix: 16) + "}"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    private static func needsEscape(_ scalar: Unicode.Scalar) -> Bool {
        // C0 controls, DEL, C1 controls (NEL among them), LINE/PARAGRAPH SEPARATOR, bidi
        // controls (they reorder what a terminal shows around them), invisible characters
        // (zero-width ones, word joiner, U+FEFF, tags: they hide text on screen), backslash.
        scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar.value == 0x2028 || scalar.value == 0x2029
            || scalar.value == 0x061C || (0x200B...0x200F).contains(scalar.value) || (0x202A...0x202E).contains(scalar.value)
            || (0x2060...0x2064).contains(scalar.value) || (0x2066...0x2069).contains(scalar.value) || scalar.value == 0xFEFF
            || (0xE0000...0xE007F).contains(scalar.value) || scalar == "\\"
    }
}

/// Where log lines go: standard error (or, in tests, memory or another descriptor).
///
/// Lines are handed to a writer thread of the sink's own, through a bounded queue: the
/// threads that log are event loops among others, and a log reader that stops reading
/// (`journald` stalled, a full pipe) must not stop them. Past ``pendingLimit`` bytes waiting,
/// lines are dropped and counted, and the writer says how many once it can write again. One
/// line is never split or interleaved with another.
///
/// Woken by a line after a quiet spell, the writer waits ``batchWindow`` before it takes what
/// is queued: at a few thousand requests a second, waking it for every line (a futex call on
/// the logging thread, a context switch on a 2-core host) cost more than the write itself.
/// With the window, the writer wakes at most once per window and writes every line queued
/// meanwhile in one `write`.
final class LogLineSink: Sendable {
    private let capturing: Bool
    private let descriptor: Int32
    /// Bytes that may wait for the writer; past them, lines are dropped.
    let pendingLimit: Int
    /// How long the writer, once woken, lets lines gather before it writes them.
    let batchWindow: Duration
    private let lines = Mutex<[String]>([])
    private let queue = Mutex(Queue())
    private let wakeUp = DispatchSemaphore(value: 0)

    /// A line waiting, or a count of dropped lines (said in their place, not itself counted).
    private struct Line {
        var bytes: [UInt8]
        var isNotice = false
    }

    private struct Queue {
        var lines: [Line] = []
        var bytes = 0
        /// Lines dropped since the writer last said so, and the format to say it in.
        var dropped = 0
        var droppedFormat = LogLineHandler.Format.text
        var droppedTotal = 0
        /// Batches the writer took, each written by one `write` unless the reader is slow.
        var batches = 0
        var writerStarted = false
        /// The writer holds lines it took and has not written yet.
        var writing = false
        /// The writer waits for a signal: the next line queued wakes it (one signal per
        /// wait, not one per line).
        var writerWaiting = false

        /// The line that says how many lines were dropped since the last such line, if any.
        mutating func takeDropNotice() -> Line? {
            guard dropped > 0 else { return nil }
            defer { dropped = 0 }
            return Line(bytes: LogLineHandler.render(level: .warning, label: "account-server", message: "log lines dropped: the log reader did not keep up",
                                                     metadata: ["dropped": "\(dropped)"], source: nil, format: droppedFormat),
                        isNotice: true)
        }
    }

    /// Standard error, flushed when the process exits (the last lines of a failed start,
    /// `database closed` after a stop).
    static let standardError: LogLineSink = {
        let sink = LogLineSink(capturing: false)
        atexit { LogLineSink.standardError.flush(timeout: .seconds(2)) }
        return sink
    }()

    init(capturing: Bool, descriptor: Int32 = 2, pendingLimit: Int = 8 << 20, batchWindow: Duration = .milliseconds(2)) {
        self.capturing = capturing
        self.descriptor = descriptor
        self.pendingLimit = pendingLimit
        self.batchWindow = batchWindow
    }

    func write(_ bytes: [UInt8], format: LogLineHandler.Format = .text) {
        if capturing {
            lines.withLock { $0.append(String(decoding: bytes.dropLast(), as: UTF8.self)) }
            return
        }
        let (start, wake) = queue.withLock { queue -> (Bool, Bool) in
            guard queue.bytes + bytes.count <= pendingLimit else {
                queue.dropped += 1
                queue.droppedTotal += 1
                queue.droppedFormat = format
                return (false, false)
            }
            // The count of the lines dropped before this one, in their place.
            if let notice = queue.takeDropNotice() { queue.lines.append(notice) }
            queue.lines.append(Line(bytes: bytes))
            queue.bytes += bytes.count
            defer { queue.writerStarted = true; queue.writerWaiting = false }
            return (!queue.writerStarted, queue.writerWaiting)
        }
        if start {
            let thread = Thread { [self] in drain() }
            thread.name = "log writer"
            thread.start()
        }
        if wake { wakeUp.signal() }
    }

    /// ``write(_:format:)``, then a short wait for the line to be written: a `critical` line
    /// often comes just before the process ends by a trap, which runs no exit handler.
    func writeAndWait(_ bytes: [UInt8], format: LogLineHandler.Format) {
        write(bytes, format: format)
        if !capturing { flush(timeout: .milliseconds(100)) }
    }

    /// Lines dropped since the start because the reader did not keep up.
    var droppedTotal: Int { queue.withLock { $0.droppedTotal } }

    /// Batches written since the start.
    var batches: Int { queue.withLock { $0.batches } }

    /// Waits until every line handed over so far is written, at most `timeout`.
    func flush(timeout: Duration) {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if queue.withLock({ $0.lines.isEmpty && !$0.writing && $0.dropped == 0 }) { return }
            usleep(1_000)
        }
    }

    /// The writer thread: takes everything waiting, writes it in one go, and says what was
    /// dropped meanwhile; waits for a signal only when nothing is left.
    private func drain() {
        var unterminated = false
        while true {
            let batch = queue.withLock { queue -> [Line]? in
                var taken = queue.lines
                // Lines dropped after the last one waiting: said after it.
                if let notice = queue.takeDropNotice() { taken.append(notice) }
                guard !taken.isEmpty else {
                    queue.writing = false
                    queue.writerWaiting = true
                    return nil
                }
                queue.lines = []
                queue.bytes = 0
                queue.writing = true
                queue.batches += 1
                return taken
            }
            guard let batch else {
                wakeUp.wait()
                // Let the lines of the next few milliseconds join this one.
                let microseconds = batchWindow.components.seconds * 1_000_000 + batchWindow.components.attoseconds / 1_000_000_000_000
                if microseconds > 0 { usleep(UInt32(clamping: microseconds)) }
                continue
            }
            var bytes = unterminated ? [UInt8(ascii: "\n")] : []
            bytes.reserveCapacity(batch.reduce(bytes.count) { $0 + $1.bytes.count })
            for line in batch { bytes += line.bytes }
            let written = writeAll(bytes)
            guard written < bytes.count else {
                unterminated = false
                continue
            }
            // A write that failed for good (the reader gone, an I/O error): the lines not
            // wholly written count as dropped, and a cut line is ended first thing next time.
            var end = unterminated ? 1 : 0, lost = 0
            for line in batch {
                end += line.bytes.count
                if end > written && !line.isNotice { lost += 1 }
            }
            if written > 0 { unterminated = bytes[written - 1] != UInt8(ascii: "\n") }
            queue.withLock { queue in
                queue.dropped += lost
                queue.droppedTotal += lost
            }
        }
    }

    /// Writes `bytes`, waiting for a reader that is slow (EAGAIN on a non-blocking descriptor)
    /// or a signal (EINTR) as a blocking write would: this is the writer's own thread. Stops
    /// at any other error. Returns how many bytes went out.
    private func writeAll(_ bytes: [UInt8]) -> Int {
        bytes.withUnsafeBufferPointer { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = Foundation.write(descriptor, buffer.baseAddress! + offset, buffer.count - offset)
                if written > 0 {
                    offset += written
                    continue
                }
                guard written < 0, errno == EINTR || errno == EAGAIN else { break }
                if errno == EAGAIN {
                    var ready = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
                    _ = poll(&ready, 1, -1)
                }
            }
            return offset
        }
    }

    var captured: [String] { lines.withLock { $0 } }
}
