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

    /// Checks a request body's `Content-Type`: a JSON FHIR type, UTF-8 if a charset is given.
    static func checkRequestContentType(_ fields: HTTPFields) throws(FHIRError) {
        guard let header = fields[.contentType] else {
            throw FHIRError(.unsupportedMediaType, code: .notSupported, "Content-Type is required: send \(fhirJSON) (application/json is accepted too).")
        }
        let (type, parameters) = parseMediaType(Substring(header))
        guard acceptedJSONTypes.contains(type) else {
            throw FHIRError(.unsupportedMediaType, code: .notSupported, "Content-Type \(type) is not supported: this server reads FHIR JSON (\(fhirJSON) or application/json).")
        }
        if let charset = parameters["charset"], charset.lowercased() != "utf-8", charset.lowercased() != "utf8" {
            throw FHIRError(.unsupportedMediaType, code: .notSupported, "charset \(charset) is not supported: FHIR JSON is UTF-8.")
        }
    }

    /// The response media type: `_format` wins over `Accept`; XML or anything non-JSON is 406.
    static func responseType(format: String?, accept: String?) throws(FHIRError) -> String {
        if let format {
            let type = format.lowercased()
            switch type {
            case "json": return fhirJSON
            case _ where acceptedJSONTypes.contains(type): return type == "text/json" ? "application/json" : type
            default:
                throw FHIRError(.notAcceptable, code: .notSupported, "_format=\(format) is not supported: this server speaks FHIR JSON only (_format=json).", expression: ["_format"])
            }
        }
        guard let accept, !accept.trimmingCharacters(in: .whitespaces).isEmpty else { return fhirJSON }
        var wildcard = false
        for range in accept.split(separator: ",") {
            let (type, parameters) = parseMediaType(range)
            if parameters["q"] == "0" || parameters["q"] == "0.0" { continue }
            if acceptedJSONTypes.contains(type) { return type == "text/json" ? "application/json" : type }
            if type == "*/*" || type == "application/*" { wildcard = true }
        }
        if wildcard { return fhirJSON }
        throw FHIRError(.notAcceptable, code: .notSupported, "Accept: \(accept) names no format this server produces: use \(fhirJSON).")
    }

    /// RFC 7240 `Prefer: return=…` as FHIR defines it.
    enum ReturnPreference {
        case representation, minimal, operationOutcome
    }

    static func returnPreference(_ fields: HTTPFields) -> ReturnPreference {
        for value in fields[values: .prefer] {
            for token in value.split(separator: ",") {
                switch token.trimmingCharacters(in: .whitespaces).lowercased() {
                case "return=minimal": return .minimal
                case "return=operationoutcome": return .operationOutcome
                case "return=representation": return .representation
                default: continue
                }
            }
        }
        return .representation
    }

    static func wantsStrictHandling(_ fields: HTTPFields) -> Bool {
        fields[values: .prefer].contains { $0.lowercased().contains("handling=strict") }
    }
}

extension HTTPField.Name {
    static let prefer = HTTPField.Name("Prefer")!
    static let requestID = HTTPField.Name("X-Request-ID")!
}
