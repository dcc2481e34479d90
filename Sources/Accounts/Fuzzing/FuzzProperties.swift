/// The properties the fuzzers check on every input, kept in the library so that the
/// regression tests replay crashes and property failures through exactly the same code.
/// Each returns nil when the input is handled correctly (accepted or refused cleanly), or a
/// sentence saying which property broke.
public enum FuzzProperties {
    /// FHIR JSON decoding and FrPractitionerRegul validation:
    /// - the parser either refuses or yields a value that the writer re-encodes into a
    ///   document that parses back to the same value (no lossy or ambiguous decoding);
    /// - validation is a pure function (same answer twice) and an accepted body has at least
    ///   one managed identifier, a family name, a given name and an e-mail;
    /// - a refusal always names at least one issue.
    public static func practitioner(_ bytes: [UInt8]) -> String? {
        let parser = JSONParser()
        if let value = try? parser.parse(bytes) {
            let written = JSONWriter().encode(value)
            guard let reparsed = try? parser.parse(written) else {
                return "the writer's output of a parsed document does not parse: \(String(decoding: written.prefix(200), as: UTF8.self))"
            }
            guard reparsed == value else { return "parse → write → parse changed the document" }
        }
        let validator = PractitionerValidator()
        let first = Result { () throws(FHIRError) in try validator.validate(body: bytes) }
        let second = Result { () throws(FHIRError) in try validator.validate(body: bytes) }
        switch (first, second) {
        case (.success(let record), .success(let again)):
            guard record == again else { return "validation is not deterministic" }
            guard record.nationalID != nil || record.sasTechnicalID != nil else { return "accepted without a managed identifier" }
            guard !record.familyName.isEmpty, !record.givenName.isEmpty else { return "accepted with an empty name" }
            return nil
        case (.failure(let error), .failure(let again)):
            guard error == again else { return "validation is not deterministic" }
            guard !error.issues.isEmpty else { return "a refusal without any issue" }
            return nil
        default:
            return "validation accepted and refused the same bytes"
        }
    }

    /// The query-string and `identifier` token parsers of a search or conditional update:
    /// - decoding either refuses or yields pairs that, percent-encoded again, decode to the
    ///   same pairs;
    /// - an accepted `identifier` token, written back as `system|value`, parses to the same
    ///   identifier, and its value has the format of its kind.
    public static func identifierQuery(_ bytes: [UInt8]) -> String? {
        let query = String(decoding: bytes, as: UTF8.self)
        guard let parameters = try? QueryParameters(query: query) else { return nil }
        let reencoded = parameters.pairs.map { PercentEncoding.encode($0.name) + "=" + PercentEncoding.encode($0.value) }.joined(separator: "&")
        guard let again = try? QueryParameters(query: reencoded) else { return "re-encoded pairs do not decode: \(reencoded.prefix(200))" }
        guard again.pairs.count == parameters.pairs.count,
              zip(again.pairs, parameters.pairs).allSatisfy({ $0.name == $1.name && $0.value == $1.value }) else {
            return "decode → encode → decode changed the pairs"
        }
        for token in parameters.values("identifier") {
            guard let identifier = try? IdentifierToken.parse(token) else { continue }
            guard let again = try? IdentifierToken.parse(identifier.description), again == identifier else {
                return "an accepted identifier does not survive system|value: \(identifier.description.prefix(200))"
            }
            guard RegulatorIdentifier(kind: identifier.kind, value: identifier.value) == identifier else {
                return "an accepted identifier value is not of its kind's format"
            }
        }
        return nil
    }
}
