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
        let sorted = merged.sorted(by: { $0.key < $1.key })
        switch format {
        case .text:
            var line = AuditLog.timestamp(Date()) + " " + event.level.rawValue + " " + Self.escaped(label) + ":"
            for (key, value) in sorted {
                line += " " + Self.escaped(key) + "=" + Self.quoted(Self.escaped(Self.bounded(Self.text(value))))
            }
            line += " " + Self.escaped(Self.bounded(event.message.description))
            if event.level >= .error { line += " (\(event.file):\(event.line))" }
            sink.write(Array(line.utf8) + [0x0A])
        case .json:
            var object: JSONObject = [
                "ts": .string(AuditLog.timestamp(Date())),
                "level": .string(event.level.rawValue),
                "label": .string(label),
                "msg": .string(Self.bounded(event.message.description)),
            ]
            for (key, value) in sorted {
                let name = object[key] == nil ? key : "meta_" + key
                object[name] = Self.json(value)
            }
            if event.level >= .error { object["source"] = .string("\(event.file):\(event.line)") }
            sink.write(JSONWriter().encode(.object(object)) + [0x0A])
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

/// Where log lines go: standard error (or, in tests, memory or another descriptor). One line
/// is one `write` under a lock, so lines from concurrent requests never interleave.
final class LogLineSink: Sendable {
    private let capturing: Bool
    private let descriptor: Int32
    private let lines = Mutex<[String]>([])
    /// Held while a line is written. `true` when the last line was cut short and its end could
    /// not be written either: the next line then starts with that end.
    private let unterminated = Mutex(false)

    static let standardError = LogLineSink(capturing: false)

    init(capturing: Bool, descriptor: Int32 = 2) {
        self.capturing = capturing
        self.descriptor = descriptor
    }

    func write(_ bytes: [UInt8]) {
        if capturing {
            lines.withLock { $0.append(String(decoding: bytes.dropLast(), as: UTF8.self)) }
            return
        }
        unterminated.withLock { unterminated in
            let newline = UInt8(ascii: "\n")
            let line = unterminated ? [newline] + bytes : bytes
            let written = writeAll(line)
            let ended = unterminated ? 1 : 0
            if written == line.count || written == ended {
                // Whole, or (a reader stuck since) nothing of it: either way no half line.
                unterminated = false
            } else if written > ended {
                unterminated = writeAll([newline]) == 0
            }
        }
    }

    /// Writes `bytes`, retrying a signal (EINTR) or a full non-blocking pipe (EAGAIN: a slow
    /// log reader): giving up there left half a line, and the next ran onto it. A reader
    /// that takes nothing for 200 ms loses the rest (the thread may be an event loop's, and
    /// the lock every logger's). Returns how many bytes went out.
    private func writeAll(_ bytes: [UInt8]) -> Int {
        bytes.withUnsafeBufferPointer { buffer in
            var offset = 0
            var attempts = 0
            while offset < buffer.count {
                let written = Foundation.write(descriptor, buffer.baseAddress! + offset, buffer.count - offset)
                if written > 0 {
                    offset += written
                    attempts = 0
                    continue
                }
                guard written < 0, errno == EINTR || errno == EAGAIN, attempts < 20 else { break }
                attempts += 1
                if errno == EAGAIN {
                    var ready = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
                    _ = poll(&ready, 1, 10)
                }
            }
            return offset
        }
    }

    var captured: [String] { lines.withLock { $0 } }
}
