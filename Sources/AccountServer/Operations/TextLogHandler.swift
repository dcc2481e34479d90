import Accounts
import Foundation
import Logging

/// The default log format, one event per line on standard error:
/// `2026-11-29T23:19:16.123Z notice account-server: key=value … message`.
///
/// Log lines carry client-supplied text (certificate subjects, identifiers, user agents,
/// e-mail addresses). A subject holding CR/LF would otherwise start a forged line that a log
/// reader takes for the server's own, so every control character, the backslash and the
/// Unicode line separators are written as escapes (`\n`, `\r`, `\u{85}`…) in the message and
/// in every metadata key and value. The JSON format escapes by construction.
struct TextLogHandler: LogHandler {
    let label: String
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info
    var metadataProvider: Logger.MetadataProvider?
    private let sink: JSONLogSink

    init(label: String, sink: JSONLogSink = .standardError) {
        self.label = label
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
        var line = AuditLog.timestamp(Date()) + " " + event.level.rawValue + " " + Self.escaped(label) + ":"
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
            line += " " + Self.escaped(key) + "=" + Self.escaped(Self.render(value))
        }
        line += " " + Self.escaped(event.message.description)
        if event.level >= .error { line += " (\(event.file):\(event.line))" }
        sink.write(Array(line.utf8) + [0x0A])
    }

    static func render(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let text): return text
        case .stringConvertible(let convertible): return convertible.description
        case .array(let values): return "[" + values.map(render).joined(separator: ", ") + "]"
        case .dictionary(let dictionary): return "[" + dictionary.sorted { $0.key < $1.key }.map { "\($0.key): \(render($0.value))" }.joined(separator: ", ") + "]"
        }
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
        // C0 controls, DEL, C1 controls (NEL among them), LINE/PARAGRAPH SEPARATOR, backslash.
        scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar.value == 0x2028 || scalar.value == 0x2029 || scalar == "\\"
    }
}
