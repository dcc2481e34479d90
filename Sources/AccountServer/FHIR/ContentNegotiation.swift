import Foundation
import Accounts
import HTTPTypes

/// FHIR content negotiation for JSON: what the client sends (`Content-Type`) and what it
/// wants back (`_format` first, then `Accept`). The SAS has been seen sending
/// `application/json` and `application/json+fhir` (sic): both are accepted beside the
/// standard `application/fhir+json`.
enum ContentNegotiation {
    static let fhirJSON = "application/fhir+json"
    static let acceptedJSONTypes = ["application/fhir+json", "application/json", "application/json+fhir", "text/json"]

    /// Splits `type/subtype; param=value` into the lower-cased type and its parameters.
    static func parseMediaType(_ text: Substring) -> (type: String, parameters: [String: String]) {
        let parts = text.split(separator: ";", omittingEmptySubsequences: false)
        let type = parts.first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
        var parameters: [String: String] = [:]
        for part in parts.dropFirst() {
            let pair = part.split(separator: "=", maxSplits: 1)
            guard pair.count == 2 else { continue }
            let value = pair[1].trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
            parameters[pair[0].trimmingCharacters(in: .whitespaces).lowercased()] = value
        }
        return (type, parameters)
    }

    /// Checks a request body's `Content-Type` (a JSON FHIR type, UTF-8 if a charset is given)
    /// and `Content-Encoding` (none, or `identity`): a compressed body is refused as an
    /// unsupported coding (415, RFC 9110 §15.5.16) rather than read as broken JSON. Each
    /// refusal names its header in `location` (`http.Content-Type`).
    static func checkRequestContentType(_ fields: HTTPFields) throws(FHIRError) {
        let contentType = FHIRIssue.http("Content-Type")
        guard let header = fields[.contentType] else {
            throw FHIRError(.unsupportedMediaType, code: .notSupported, "Content-Type is required: send \(fhirJSON) (application/json is accepted too).",
                            location: contentType)
        }
        let (type, parameters) = parseMediaType(Substring(header))
        guard acceptedJSONTypes.contains(type) else {
            throw FHIRError(.unsupportedMediaType, code: .notSupported, "Content-Type \(type) is not supported: this server reads FHIR JSON (\(fhirJSON) or application/json).",
                            location: contentType)
        }
        if let charset = parameters["charset"], charset.lowercased() != "utf-8", charset.lowercased() != "utf8" {
            throw FHIRError(.unsupportedMediaType, code: .notSupported, "charset \(charset) is not supported: FHIR JSON is UTF-8.", location: contentType)
        }
        if let version = parameters["fhirversion"], !isR4(version) {
            throw FHIRError(.unsupportedMediaType, code: .notSupported, "fhirVersion=\(version) is not supported: this server speaks FHIR R4 (fhirVersion=4.0).",
                            location: contentType)
        }
        let codings = fields[values: .contentEncoding].flatMap { $0.split(separator: ",") }
            .map { $0.trimmingCharacters(in: .whitespaces).lowercased() }.filter { !$0.isEmpty && $0 != "identity" }
        if let coding = codings.first {
            throw FHIRError(.unsupportedMediaType, code: .notSupported,
                            "Content-Encoding \(coding) is not supported: send the body uncompressed.", location: FHIRIssue.http("Content-Encoding"))
        }
    }

    /// FHIR R4's `fhirVersion` media-type parameter (http.html#version-parameter): `4.0`, or
    /// the full `4.0.1`.
    static func isR4(_ version: String) -> Bool {
        version == "4.0" || version == "4.0.1"
    }

    /// An `Accept` range's quality (RFC 9110 §12.4.2): 1 when absent; nil when unreadable.
    static func quality(_ parameters: [String: String]) -> Double? {
        guard let q = parameters["q"] else { return 1 }
        guard let value = Double(q), value >= 0, value <= 1, q.count <= 5 else { return nil }
        return value
    }

    /// The response media type: `_format` wins over `Accept`; XML or anything non-JSON is 406.
    static func responseType(format: String?, accept: String?) throws(FHIRError) -> String {
        if let format {
            let type = format.lowercased()
            switch type {
            case "json": return fhirJSON
            case _ where acceptedJSONTypes.contains(type): return type == "text/json" ? "application/json" : type
            default:
                throw FHIRError(.notAcceptable, code: .notSupported, "_format=\(format) is not supported: this server speaks FHIR JSON only (_format=json).", location: FHIRIssue.http("_format"))
            }
        }
        guard let accept, !accept.trimmingCharacters(in: .whitespaces).isEmpty else { return fhirJSON }
        // The acceptable range of highest quality wins; among equals, a type named outright
        // before a wildcard, then the first listed. A range of quality 0, or asking for another
        // FHIR version than R4, is not acceptable.
        var best: (type: String, quality: Double, wildcard: Bool)?
        let ranges = accept.split(separator: ",").map { parseMediaType($0) }
        // A type named with q=0 is refused, even where a wildcard would cover it (the more
        // specific range decides, RFC 9110 §12.5.1).
        let refused = Set(ranges.filter { quality($0.parameters) == 0 }.map(\.type))
        for (type, parameters) in ranges {
            guard let quality = quality(parameters), quality > 0 else { continue }
            if let version = parameters["fhirversion"], !isR4(version) { continue }
            let produced: String
            let wildcard = type == "*/*" || type == "application/*"
            if acceptedJSONTypes.contains(type) {
                produced = type == "text/json" ? "application/json" : type
            } else if wildcard, let first = acceptedJSONTypes.first(where: { $0 != "text/json" && !refused.contains($0) }) {
                produced = first
            } else {
                continue
            }
            if let current = best, quality < current.quality || (quality == current.quality && (wildcard || !current.wildcard)) { continue }
            best = (produced, quality, wildcard)
        }
        if let best { return best.type }
        throw FHIRError(.notAcceptable, code: .notSupported, "Accept: \(accept) names no format this server produces: use \(fhirJSON) (FHIR R4).",
                        location: FHIRIssue.http("Accept"))
    }

    /// RFC 7240 `Prefer: return=…` as FHIR defines it.
    enum ReturnPreference {
        case representation, minimal, operationOutcome
    }

    static func returnPreference(_ fields: HTTPFields) -> ReturnPreference {
        switch preferences(fields)["return"]?.lowercased() {
        case "minimal": return .minimal
        case "operationoutcome": return .operationOutcome
        default: return .representation
        }
    }

    static func wantsStrictHandling(_ fields: HTTPFields) -> Bool {
        preferences(fields)["handling"]?.lowercased() == "strict"
    }

    /// The preferences of `Prefer` (RFC 7240 §2), in one field or several: `name[=value]`, with
    /// optional whitespace around `=`, a token or a quoted-string value, then `;` parameters
    /// (ignored). Names are case-insensitive; a preference given twice counts once, the first
    /// time (§2). `Prefer: handling = strict` is strict, `return="minimal"` minimal.
    static func preferences(_ fields: HTTPFields) -> [String: String] {
        var found: [String: String] = [:]
        for field in fields[values: .prefer] {
            for preference in splitOutsideQuotes(Substring(field), on: ",") {
                guard let main = splitOutsideQuotes(preference, on: ";").first else { continue }
                let pair = main.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let name = pair[0].trimmingCharacters(in: .whitespaces).lowercased()
                guard !name.isEmpty, found[name] == nil else { continue }
                var value = pair.count == 2 ? pair[1].trimmingCharacters(in: .whitespaces) : ""
                if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") {
                    value = String(value.dropFirst().dropLast()).replacingOccurrences(of: "\\\"", with: "\"")
                }
                found[name] = value
            }
        }
        return found
    }

    /// `text` split at `separator` where it is not inside a quoted-string.
    static func splitOutsideQuotes(_ text: Substring, on separator: Character) -> [Substring] {
        var parts: [Substring] = []
        var start = text.startIndex
        var quoted = false
        var escaped = false
        var index = text.startIndex
        while index < text.endIndex {
            let character = text[index]
            if escaped {
                escaped = false
            } else if quoted && character == "\\" {
                escaped = true
            } else if character == "\"" {
                quoted.toggle()
            } else if character == separator && !quoted {
                parts.append(text[start..<index])
                start = text.index(after: index)
            }
            index = text.index(after: index)
        }
        parts.append(text[start...])
        return parts.filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
    }
}

extension HTTPField.Name {
    static let prefer = HTTPField.Name("Prefer")!
    static let requestID = HTTPField.Name("X-Request-ID")!
}
