/// A query string parsed strictly (lives beside the FHIR model so the fuzzer can reach it
/// without the server): percent-decoding must be valid UTF-8 and every `%`
/// must start a valid escape. `+` is kept literally (FHIR tokens never encode spaces as `+`).
public struct QueryParameters: Sendable {
    public var pairs: [(name: String, value: String)]

    public static let empty = QueryParameters()

    private init() { pairs = [] }

    public init(query: String?) throws(FHIRError) {
        pairs = []
        guard let query, !query.isEmpty else { return }
        for component in query.split(separator: "&", omittingEmptySubsequences: true) {
            let parts = component.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = try Self.percentDecode(parts[0])
            // A broken value is refused naming its parameter, as the other query refusals do.
            let value = parts.count > 1 ? try Self.percentDecode(parts[1], location: FHIRIssue.http(name)) : ""
            pairs.append((name, value))
        }
    }

    public func values(_ name: String) -> [String] { pairs.filter { $0.name == name }.map(\.value) }
    public func first(_ name: String) -> String? { values(name).first }
    public var names: [String] { pairs.map(\.name) }

    public static func percentDecode(_ text: Substring, location: [String] = []) throws(FHIRError) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else { bytes.append(byte); continue }
            guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else {
                throw FHIRError(.invalidRequest, code: .invalid, "The query string has an invalid percent-escape in \"\(text)\".", location: location)
            }
            bytes.append(high << 4 | low)
        }
        guard let decoded = String(validating: bytes, as: UTF8.self) else {
            throw FHIRError(.invalidRequest, code: .invalid, "The query string is not valid UTF-8 once decoded.", location: location)
        }
        return decoded
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}

/// Parses the `identifier` token of a search or conditional update: `system|value` with the
/// `|` raw or percent-encoded; the system must be the national id or SAS technical id system
/// and the value must have that system's format.
public enum IdentifierToken {
    /// `location`: where the token came from, for the refusal (`http.identifier`, or the
    /// `If-None-Exist` header's).
    public static func parse(_ token: String, location: [String] = FHIRIssue.http("identifier")) throws(FHIRError) -> RegulatorIdentifier {
        guard let bar = token.firstIndex(of: "|") else {
            throw FHIRError(.invalidRequest, code: .invalid,
                            "identifier must be system|value, e.g. \(FHIRSystems.nationalID)|810002673899.", location: location)
        }
        let system = String(token[..<bar])
        let value = String(token[token.index(after: bar)...])
        guard let kind = RegulatorIdentifier.Kind(system: system) else {
            throw FHIRError(.invalidRequest, code: .notSupported,
                            "identifier system \"\(system)\" is not supported: use \(FHIRSystems.nationalID) (national id) or \(FHIRSystems.sasPlatform) (SAS technical id).",
                            location: location)
        }
        guard !value.isEmpty else {
            throw FHIRError(.invalidRequest, code: .invalid, "identifier has no value after the '|'.", location: location)
        }
        guard let identifier = RegulatorIdentifier(kind: kind, value: value) else {
            throw FHIRError(.invalidRequest, code: .value,
                            "\"\(value)\" is not a valid \(kind.typeCode) value: expected \(RegulatorIdentifier.formatHint(for: kind)).",
                            location: location)
        }
        return identifier
    }
}

/// RFC 3986 percent-encoding of everything but the unreserved characters: the inverse of
/// ``QueryParameters/percentDecode(_:)`` (used for relayed certificates and by the fuzzer's
/// round-trip property).
public enum PercentEncoding {
    /// Encodes every byte but ASCII letters, digits and the characters in `keeping` (by
    /// default the unreserved `-._~`), and returns `text` itself when nothing needed encoding.
    public static func encode(_ text: String, keeping: String = "-._~") -> String {
        let kept = Set(keeping.utf8)
        let hex = Array("0123456789ABCDEF".utf8)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count * 11 / 10)
        var changed = false
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                bytes.append(byte)
            case _ where kept.contains(byte):
                bytes.append(byte)
            default:
                changed = true
                bytes += [UInt8(ascii: "%"), hex[Int(byte >> 4)], hex[Int(byte & 0x0f)]]
            }
        }
        return changed ? String(decoding: bytes, as: UTF8.self) : text
    }
}
