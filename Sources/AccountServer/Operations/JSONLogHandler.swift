import Accounts
import Foundation
import Logging
import Synchronization

/// Log lines as JSON objects (one per line, on standard error), for log shippers:
/// `{"ts":…,"level":…,"label":…,"msg":…, <metadata>…}`. Metadata keys are flattened to the
/// top level (`request_id`, `account_id`, `client_subject`…); a key that collides with a
/// fixed field is prefixed with `meta_`.
struct JSONLogHandler: LogHandler {
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
        var object: JSONObject = [
            "ts": .string(AuditLog.timestamp(Date())),
            "level": .string(event.level.rawValue),
            "label": .string(label),
            "msg": .string(event.message.description),
        ]
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { $1 } }
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
            let name = object[key] == nil ? key : "meta_" + key
            object[name] = Self.json(value)
        }
        if event.level >= .error { object["source"] = .string("\(event.file):\(event.line)") }
        sink.write(JSONWriter().encode(.object(object)) + [0x0A])
    }

    static func json(_ value: Logger.Metadata.Value) -> JSONValue {
        switch value {
        case .string(let text): return .string(text)
        case .stringConvertible(let convertible): return .string(convertible.description)
        case .array(let values): return .array(values.map(json))
        case .dictionary(let dictionary): return .object(JSONObject(dictionary.sorted { $0.key < $1.key }.map { JSONMember($0.key, json($0.value)) }))
        }
    }
}

/// Where JSON log lines go: standard error, or (in tests) memory. One line is one `write`
/// under a lock, so lines from concurrent requests never interleave.
final class JSONLogSink: Sendable {
    private let capturing: Bool
    private let lines = Mutex<[String]>([])
    private let lock = Mutex(())

    static let standardError = JSONLogSink(capturing: false)

    init(capturing: Bool) {
        self.capturing = capturing
    }

    func write(_ bytes: [UInt8]) {
        if capturing {
            lines.withLock { $0.append(String(decoding: bytes.dropLast(), as: UTF8.self)) }
            return
        }
        lock.withLock { _ in
            bytes.withUnsafeBufferPointer { buffer in
                var offset = 0
                while offset < buffer.count {
                    let written = Foundation.write(2, buffer.baseAddress! + offset, buffer.count - offset)
                    if written <= 0 { break }
                    offset += written
                }
            }
        }
    }

    var captured: [String] { lines.withLock { $0 } }
}
