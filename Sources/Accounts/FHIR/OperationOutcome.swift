/// One problem, as an `OperationOutcome.issue`: the element it is about (a FHIRPath
/// expression such as `Practitioner.telecom[0].value`) and a sentence a person can act on.
public struct FHIRIssue: Sendable, Equatable, CustomStringConvertible {
    /// `OperationOutcome.issue.severity`.
    public enum Severity: String, Sendable {
        case fatal, error, warning, information
    }

    /// The subset of the FHIR `issue-type` value set the product uses.
    public enum Code: String, Sendable {
        case invalid, structure, required, value, invariant, security, login, forbidden
        case processing, notSupported = "not-supported", duplicate, notFound = "not-found"
        case conflict, tooLong = "too-long", codeInvalid = "code-invalid", exception, informational
        case timeout, transient
    }

    public var severity: Severity
    public var code: Code
    public var diagnostics: String
    /// Elements of the resource (FHIRPath).
    public var expression: [String]
    /// What the issue is about outside the resource: `http.` and a URL parameter's or a header's
    /// name, as FHIR R4 defines `issue.location` for HTTP errors (its `searchfail` example).
    public var location: [String]

    public init(severity: Severity = .error, code: Code, diagnostics: String, expression: [String] = [], location: [String] = []) {
        self.severity = severity
        self.code = code
        self.diagnostics = Self.printable(diagnostics, limit: Self.diagnosticsLimit)
        // FHIR strings are never empty; a parameter name quoted from the URL may be.
        self.expression = expression.filter { !$0.isEmpty }.map { Self.printable($0, limit: Self.pathLimit) }
        self.location = location.filter { !$0.isEmpty }.map { Self.printable($0, limit: Self.pathLimit) }
    }

    public var description: String {
        let at = expression + location
        return at.isEmpty ? diagnostics : "\(at.joined(separator: ", ")): \(diagnostics)"
    }

    /// `issue.location` for a URL parameter or a header: `http.identifier`, `http.If-Match`.
    public static func http(_ name: String) -> [String] {
        name.isEmpty ? [] : ["http.\(name)"]
    }

    /// Bounds, in characters, of a diagnostic sentence and of an element's path.
    public static let diagnosticsLimit = 1000
    public static let pathLimit = 200

    /// Diagnostics quote what the client sent (a value, a parameter's name, percent-decoded),
    /// which may hold anything. Control characters (C0, DEL, C1, U+2028/9) and the
    /// bidirectional controls are written as `\u{…}`, and the text is bounded, so that the
    /// answer, the log line and the audit row all hold it whole: PostgreSQL's `text` refuses
    /// NUL, which otherwise dropped the refusal from the audit trail on that store only.
    static func printable(_ text: String, limit: Int) -> String {
        var escaped = ""
        var needed = false
        for scalar in text.unicodeScalars {
            if Self.isControl(scalar) {
                needed = true
                escaped += "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
            } else {
                escaped.unicodeScalars.append(scalar)
            }
        }
        // Counted in Unicode scalars: a character may carry any number of combining marks.
        let result = needed ? escaped : text
        let count = result.unicodeScalars.count
        guard count > limit else { return result }
        var kept = String.UnicodeScalarView()
        kept.append(contentsOf: result.unicodeScalars.prefix(limit))
        return String(kept) + "… (\(count - limit) more characters)"
    }

    static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        scalar.properties.generalCategory == .control || scalar.value == 0x061C || scalar.value == 0x200E || scalar.value == 0x200F
            || (0x2028...0x202E).contains(scalar.value) || (0x2066...0x2069).contains(scalar.value)
    }
}

/// A refusal of a FHIR interaction: why (the HTTP-independent ``Category``) and every issue
/// found. The server maps the category to a status code; nothing has been written when one
/// of these is thrown.
public struct FHIRError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What kind of refusal this is; each maps to exactly one HTTP status.
    public enum Category: Sendable, Equatable {
        /// Not JSON, not a FHIR resource, wrong JSON types (400).
        case invalidContent
        /// A bad search or query parameter (400).
        case invalidRequest
        /// The resource breaks FrPractitionerRegul or a business rule (422).
        case unprocessable
        /// Another account already holds the identifier or e-mail (409).
        case conflict
        /// `If-Match` named another version (412).
        case preconditionFailed
        /// No such resource (404).
        case notFound
        /// No such interaction on this resource or path (405).
        case methodNotAllowed(allowed: [String])
        /// Content type not supported (415).
        case unsupportedMediaType
        /// Response format not supported (406).
        case notAcceptable
        /// Body larger than the limit (413).
        case payloadTooLarge
        /// A failure of ours, not the client's (500).
        case internalError
        /// The caller's certificate, or the proxy that relayed it, is not accepted (403).
        case forbidden
        /// The INT_R01 upstream could not be reached or answered garbage (502).
        case badGateway
        /// The INT_R01 upstream did not answer in time (504).
        case gatewayTimeout
        /// A request framing this server does not relay, such as a transfer coding other than
        /// `chunked` (501, as nginx answers).
        case notImplemented
        /// The database cannot answer now (restarting, failing over); nothing was changed and
        /// the same call may be sent again (503, `Retry-After`).
        case serviceUnavailable
    }

    public var category: Category
    public var issues: [FHIRIssue]
    /// The account the refusal is about (a version that does not match, an identifier or an
    /// e-mail another account holds): its audit event names it, so that the account's trail
    /// shows the attempts against it. Never part of the answer.
    public var accountID: String?

    public init(_ category: Category, issues: [FHIRIssue]) {
        self.category = category
        self.issues = issues
    }

    public init(_ category: Category, code: FHIRIssue.Code, _ diagnostics: String, expression: [String] = [], location: [String] = []) {
        self.init(category, issues: [FHIRIssue(code: code, diagnostics: diagnostics, expression: expression, location: location)])
    }

    public var description: String { issues.map(\.description).joined(separator: "; ") }

    /// This refusal, about `accountID` (``accountID``).
    public func concerning(_ accountID: String) -> FHIRError {
        var error = self
        error.accountID = accountID
        return error
    }

    /// The issues an OperationOutcome lists: the first `limit`, then one informational issue
    /// counting the rest, so a hostile body cannot make the answer itself megabytes long.
    public func reportedIssues(limit: Int = 100) -> [FHIRIssue] {
        guard issues.count > limit else { return issues }
        return Array(issues.prefix(limit)) + [FHIRIssue(severity: .information, code: .informational,
                                                        diagnostics: "\(issues.count - limit) more issue(s) of the same request not listed")]
    }

    /// The issues without their sentences: each one's code and the elements it is about
    /// (`duplicate at Practitioner.telecom[0].value`). For logs, which outlive the audit's
    /// controls and go to other hands (a log shipper): a sentence may quote what the SAS sent,
    /// an e-mail address or an IDNPS; the full text stays in the answer and the audit trail.
    public func codesSummary(limit: Int = 10) -> String {
        let shown = issues.prefix(limit).map { issue -> String in
            let at = issue.expression + issue.location
            return at.isEmpty ? issue.code.rawValue : "\(issue.code.rawValue) at \(at.joined(separator: ", "))"
        }.joined(separator: "; ")
        return issues.count > limit ? shown + "; and \(issues.count - limit) more issue(s)" : shown
    }

    /// The first `limit` issues and how many more there were: what the audit trail
    /// records, so a hostile body (a 1 MiB array of nulls is thousands of issues) cannot
    /// turn one refusal into megabytes of audit rows.
    public func summary(limit: Int = 10) -> String {
        let shown = issues.prefix(limit).map(\.description).joined(separator: "; ")
        return issues.count > limit ? shown + "; and \(issues.count - limit) more issue(s)" : shown
    }
}

/// Builds `OperationOutcome` resources, the body of every FHIR error and of
/// `Prefer: return=OperationOutcome` answers.
public enum OperationOutcome {
    public static func resource(_ issues: [FHIRIssue]) -> JSONValue {
        var outcome: JSONObject = ["resourceType": .string("OperationOutcome")]
        outcome["issue"] = .array(issues.map { issue in
            var entry: JSONObject = [
                "severity": .string(issue.severity.rawValue),
                "code": .string(issue.code.rawValue),
            ]
            entry["diagnostics"] = .string(issue.diagnostics)
            if !issue.expression.isEmpty {
                entry["expression"] = .array(issue.expression.map(JSONValue.string))
            }
            if !issue.location.isEmpty {
                entry["location"] = .array(issue.location.map(JSONValue.string))
            }
            return .object(entry)
        })
        return .object(outcome)
    }
}

extension FHIRError {
    /// The database cannot answer now; nothing was changed.
    public static let databaseUnavailable = FHIRError(.serviceUnavailable, code: .transient,
                                                      "The service cannot reach its database right now; nothing was changed. Send the same request again in a moment.")
}

extension FHIRError {
    /// The database connection was lost while the change was being committed: it may or may
    /// not be stored. Saying "nothing was changed" here could be false.
    public static let databaseOutcomeUnknown = FHIRError(.serviceUnavailable, code: .transient,
                                                         "The connection to the database was lost while the change was being committed: it may or may not have been stored. Read the resource back (GET Practitioner?identifier=…) before sending the change again; a PUT may simply be sent again.")
}
