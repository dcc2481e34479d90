import Accounts
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore

/// The INT_R02 FHIR surface: `POST /Practitioner`, `PUT /Practitioner?identifier=…`,
/// `GET /Practitioner/{id}`, `GET /Practitioner?identifier=…`, `GET /metadata`.
///
/// Each write is: negotiate → read at most 1 MiB → validate FrPractitionerRegul →
/// provision (one transaction, audited) → render. Every refusal is audited too.
struct PractitionerController: Sendable {
    let provisioner: Provisioner
    let directory: AccountDirectory
    /// The FHIR base as clients see it; when nil, `https://<Host header>`.
    let publicBaseURL: String?
    let startedAt: Date
    let metrics: ServerMetrics
    /// The INT_R01 slot search this product stands in front of, whose capabilities
    /// `/metadata` merges with ours.
    let upstream: SlotSearchUpstream?
    private let validator = PractitionerValidator()

    init(provisioner: Provisioner, directory: AccountDirectory, publicBaseURL: String?, metrics: ServerMetrics,
         upstream: SlotSearchUpstream? = nil, startedAt: Date = Date()) {
        self.provisioner = provisioner
        self.upstream = upstream
        self.metrics = metrics
        self.directory = directory
        self.publicBaseURL = publicBaseURL.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
        self.startedAt = startedAt
    }

    func addRoutes(to router: Router<FHIRRequestContext>) {
        router.get("metadata") { request, context in try await self.metadata(request, context) }
        router.post("Practitioner") { request, context in try await self.write(request, context, isCreate: true) }
        router.put("Practitioner") { request, context in try await self.write(request, context, isCreate: false) }
        router.get("Practitioner") { request, context in try await self.search(request, context) }
        router.get("Practitioner/:id") { request, context in try await self.read(request, context) }
    }

    /// The methods each known path supports, for 405 answers; nil for an unknown path.
    static func allowedMethods(path: String) -> [String]? {
        let trimmed = path.hasSuffix("/") && path.count > 1 ? String(path.dropLast()) : path
        let segments = trimmed.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        switch (segments.count, segments.first) {
        case (1, "metadata"?): return ["GET"]
        case (1, "Practitioner"?): return ["GET", "POST", "PUT"]
        case (2, "Practitioner"?): return ["GET"]
        default: return nil
        }
    }

    // MARK: Shared pieces

    private struct Negotiated {
        var contentType: String
        var pretty: Bool
        var query: QueryParameters
    }

    private func negotiate(_ request: Request) throws(FHIRError) -> Negotiated {
        let query = try QueryParameters(query: request.uri.query)
        let contentType = try ContentNegotiation.responseType(format: query.first("_format"), accept: request.headers[.accept])
        return Negotiated(contentType: contentType, pretty: query.first("_pretty") == "true", query: query)
    }

    private func baseURL(_ request: Request) -> String {
        if let publicBaseURL { return publicBaseURL }
        let host = request.head.authority ?? "localhost"
        let safe = !host.isEmpty && host.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "-") || byte == UInt8(ascii: ":") || byte == UInt8(ascii: "[") || byte == UInt8(ascii: "]")
        }
        return "https://\(safe ? host : "localhost")"
    }

    private func resourceHeaders(_ account: AccountSnapshot, base: String) -> HTTPFields {
        var headers: HTTPFields = [:]
        headers[.location] = "\(base)/Practitioner/\(account.id)"
        headers[.eTag] = "W/\"\(account.version)\""
        // A time ahead of this instance's clock (another instance's, PostgreSQL) is replaced
        // by now, as RFC 9110 §8.8.2.1 asks: never later than the answer's `Date`.
        headers[.lastModified] = FHIRResponses.httpDate(min(account.updatedAt, Date()))
        return headers
    }

    // MARK: Interactions

    func metadata(_ request: Request, _ context: FHIRRequestContext) async throws -> Response {
        let negotiated = try negotiate(request)
        var statement = CapabilityStatement.resource(baseURL: baseURL(request), date: startedAt)
        if let upstream {
            statement = CapabilityStatement.merged(local: statement, upstream: try await upstream.capabilityStatement(context: context))
        }
        return FHIRResponses.json(statement, status: .ok, contentType: negotiated.contentType, pretty: negotiated.pretty)
    }

    func write(_ request: Request, _ context: FHIRRequestContext, isCreate: Bool) async throws -> Response {
        let action = isCreate ? "create" : "conditional-update"
        let identity = context.caller
        let callContext = CallContext(
            actor: AuditActor(subject: identity?.subject, serial: identity?.serial, address: context.clientAddress),
            requestID: context.requestID
        )
        var auditIdentifier: String?
        var auditTarget: RegulatorIdentifier?
        do {
            let negotiated = try negotiate(request)
            let target: RegulatorIdentifier?
            if isCreate {
                target = nil
                if let unsupported = negotiated.query.names.first(where: { !["_format", "_pretty"].contains($0) }) {
                    throw FHIRError(.invalidRequest, code: .notSupported, "Parameter \(unsupported) is not supported on create.", location: FHIRIssue.http(unsupported))
                }
            } else {
                target = try conditionalTarget(negotiated.query)
                auditIdentifier = target?.description
                auditTarget = target
            }
            let ifMatch = try Self.parseIfMatch(request.headers[values: .ifMatch])
            if isCreate, ifMatch != nil {
                throw FHIRError(.invalidRequest, code: .invalid, "If-Match has no meaning on create.", location: FHIRIssue.http("If-Match"))
            }
            let ifNoneMatch = try Self.parseIfMatch(request.headers[values: .ifNoneMatch], header: "If-None-Match")
            if isCreate, ifNoneMatch != nil {
                throw FHIRError(.invalidRequest, code: .invalid,
                                "If-None-Match has no meaning on create: to create only when no account holds an identifier, send If-None-Exist: identifier=system|value.",
                                location: FHIRIssue.http("If-None-Match"))
            }
            let preconditions = UpdatePreconditions(ifNoneMatch: ifNoneMatch,
                                                    ifUnmodifiedSince: Self.parseIfUnmodifiedSince(request.headers[values: .ifUnmodifiedSince]))
            let ifNoneExist = try Self.parseIfNoneExist(request.headers[values: Self.ifNoneExistField])
            if !isCreate, ifNoneExist != nil {
                throw FHIRError(.invalidRequest, code: .invalid, "If-None-Exist applies to create (POST) only.", location: FHIRIssue.http("If-None-Exist"))
            }
            try ContentNegotiation.checkRequestContentType(request.headers)
            let body = try await readBody(request, context)
            let record = try validator.validate(body: body.readableBytesView)
            if isCreate { auditIdentifier = record.identifiers.map(\.description).joined(separator: ", ") }
            if let ifNoneExist, !record.identifiers.contains(ifNoneExist) {
                // What such a call created, its retry would not find: it would answer 409, not
                // 200 (HAPI FHIR refuses it the same way, HAPI-0929).
                throw FHIRError(.invalidRequest, code: .invalid,
                                "If-None-Exist names \(ifNoneExist), which the body does not carry: a retry of this call would not find what it created. Send the identifier in Practitioner.identifier too.",
                                expression: ["Practitioner.identifier"], location: FHIRIssue.http("If-None-Exist"))
            }

            let provisioning: ProvisioningRequest = if let target {
                .conditionalUpdate(target, record, ifMatch: ifMatch, also: preconditions)
            } else {
                .create(record, ifNoneExist: ifNoneExist)
            }
            let result = try await provisioner.provision(provisioning, context: callContext)
            metrics.intR02(interaction: action, outcome: result.kind.rawValue)
            context.logger.info("INT_R02 \(action)", metadata: [
                "outcome": "\(result.kind.rawValue)", "account_id": "\(result.account.id)",
                "client_subject": "\(identity?.subject ?? "-")",
            ])
            let status: HTTPResponse.Status = result.kind == .created ? .created : .ok
            let headers = resourceHeaders(result.account, base: baseURL(request))
            switch ContentNegotiation.returnPreference(request.headers) {
            case .minimal:
                return Response(status: status, headers: headers)
            case .operationOutcome:
                let issue = FHIRIssue(severity: .information, code: .informational,
                                      diagnostics: "Practitioner/\(result.account.id) \(result.kind.rawValue) (version \(result.account.version)).")
                return FHIRResponses.json(OperationOutcome.resource([issue]), status: status, contentType: negotiated.contentType,
                                          pretty: negotiated.pretty, headers: headers)
            case .representation:
                return FHIRResponses.json(PractitionerRenderer.resource(result.account), status: status,
                                          contentType: negotiated.contentType, pretty: negotiated.pretty, headers: headers)
            }
        } catch let error as FHIRError {
            let status = FHIRResponses.status(for: error.category)
            metrics.intR02(interaction: action, outcome: String(status.code))
            // A lost COMMIT may have stored the change (and its own audit event): not "refused".
            let outcome = error == .databaseOutcomeUnknown ? "\(status.code) outcome unknown" : "\(status.code) refused"
            await provisioner.recordRefusal(action: action, identifier: auditIdentifier ?? request.uri.query, outcome: outcome,
                                            detail: error.summary(), accountID: error.accountID, target: auditTarget, context: callContext)
            // Codes and elements only: a sentence may quote an e-mail address or an IDNPS.
            context.logger.notice("INT_R02 \(action) refused", metadata: ["status": "\(status.code)", "issues": "\(error.codesSummary())"])
            throw error
        }
    }

    /// A conditional update needs exactly one `identifier` and nothing else that would be
    /// silently ignored (a criterion dropped could update the wrong account).
    private func conditionalTarget(_ query: QueryParameters) throws(FHIRError) -> RegulatorIdentifier {
        let identifiers = query.values("identifier")
        guard identifiers.count == 1, let token = identifiers.first else {
            throw FHIRError(.invalidRequest, code: .required,
                            identifiers.isEmpty
                                ? "PUT /Practitioner needs ?identifier=system|value (conditional update); update by id is not supported."
                                : "Exactly one identifier parameter is allowed in a conditional update.",
                            location: FHIRIssue.http("identifier"))
        }
        if let unsupported = query.names.first(where: { !["identifier", "_format", "_pretty"].contains($0) }) {
            throw FHIRError(.invalidRequest, code: .notSupported,
                            "Search parameter \(unsupported) is not supported in a conditional update: only identifier is.", location: FHIRIssue.http(unsupported))
        }
        return try IdentifierToken.parse(token)
    }

    /// `If-Match: W/"3"` (or `"3"`, or a list of them, in one field or several) → those
    /// versions; `If-Match: *` → the matched account must exist (RFC 9110 §13.1.1). The same
    /// syntax for `If-None-Match` (`header`), whose `*` means that no account may match.
    static func parseIfMatch(_ fields: [String], header: String = "If-Match") throws(FHIRError) -> VersionPrecondition? {
        let members = fields.flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !members.isEmpty else {
            if fields.isEmpty { return nil }
            throw FHIRError(.invalidRequest, code: .invalid, "\(header) must be * or version ETags such as W/\"3\".", location: FHIRIssue.http(header))
        }
        if members == ["*"] { return .exists }
        var versions: [Int] = []
        for member in members {
            var text = Substring(member)
            if text.hasPrefix("W/") { text = text.dropFirst(2) }
            // An entity-tag (RFC 9110 §8.8.3): anything else is a malformed header, 400. One
            // that is not a version of ours is simply no match (If-Match: 412; If-None-Match:
            // the condition holds).
            guard text.count >= 2, text.first == "\"", text.last == "\"",
                  text.dropFirst().dropLast().unicodeScalars.allSatisfy({ $0.value == 0x21 || (0x23...0x7E).contains($0.value) || $0.value >= 0x80 }) else {
                throw FHIRError(.invalidRequest, code: .invalid, "\(header) must be * or version ETags such as W/\"3\".", location: FHIRIssue.http(header))
            }
            if let version = Int(text.dropFirst().dropLast()), version > 0 { versions.append(version) }
        }
        return .versions(versions)
    }

    static let ifNoneExistField = HTTPField.Name("If-None-Exist")!

    /// `If-Unmodified-Since` as an HTTP-date in any of RFC 9110 §5.6.7's three forms; nil
    /// when absent, and when it is not a valid date, which §13.1.4 says to ignore.
    static func parseIfUnmodifiedSince(_ fields: [String]) -> Date? {
        guard fields.count == 1 else { return nil }
        return HTTPDate.parse(fields[0])
    }

    /// `If-None-Exist: identifier=system|value` (FHIR conditional create) → the identifier.
    /// Only `identifier`, once: a criterion we would ignore could create a duplicate.
    static func parseIfNoneExist(_ fields: [String]) throws(FHIRError) -> RegulatorIdentifier? {
        guard !fields.isEmpty else { return nil }
        let parameters = try QueryParameters(query: fields.count == 1 ? fields[0].trimmingCharacters(in: .whitespaces) : "")
        let identifiers = parameters.values("identifier")
        guard fields.count == 1, identifiers.count == 1, let token = identifiers.first, parameters.names.allSatisfy({ $0 == "identifier" }) else {
            throw FHIRError(.invalidRequest, code: .notSupported,
                            "If-None-Exist must be exactly one identifier=system|value: no other criterion is supported.", location: FHIRIssue.http("If-None-Exist"))
        }
        return try IdentifierToken.parse(token, location: FHIRIssue.http("If-None-Exist"))
    }

    private func readBody(_ request: Request, _ context: FHIRRequestContext) async throws(FHIRError) -> ByteBuffer {
        if let length = request.headers[.contentLength].flatMap(Int.init), length > FHIRLimits.maximumBodyBytes {
            throw FHIRError(.payloadTooLarge, code: .tooLong, "The body (\(length) bytes) exceeds \(FHIRLimits.maximumBodyBytes) bytes.")
        }
        do {
            return try await request.body.collect(upTo: FHIRLimits.maximumBodyBytes)
        } catch is NIOTooManyBytesError {
            // A chunked body (no Content-Length) that grew past the limit.
            throw FHIRError(.payloadTooLarge, code: .tooLong, "The body exceeds \(FHIRLimits.maximumBodyBytes) bytes.")
        } catch {
            throw FHIRError(.invalidContent, code: .structure, "The body could not be read.")
        }
    }

    func read(_ request: Request, _ context: FHIRRequestContext) async throws -> Response {
        let negotiated = try negotiate(request)
        let id = context.parameters.get("id") ?? ""
        guard PractitionerValidator.isValidResourceID(id),
              let account = try await directory.snapshot(id: id) else {
            throw FHIRError(.notFound, code: .notFound, "Practitioner/\(id) does not exist.")
        }
        return FHIRResponses.json(PractitionerRenderer.resource(account), status: .ok, contentType: negotiated.contentType,
                                  pretty: negotiated.pretty, headers: resourceHeaders(account, base: baseURL(request)))
    }

    func search(_ request: Request, _ context: FHIRRequestContext) async throws -> Response {
        let negotiated = try negotiate(request)
        let tokens = negotiated.query.values("identifier")
        let unsupported = negotiated.query.names.filter { !["identifier", "_format", "_pretty"].contains($0) }
        // FHIR search: a parameter with a modifier the server does not support SHALL be
        // refused, whatever the handling preference (`identifier:not` ignored would answer
        // the very account it excludes).
        if let modified = unsupported.first(where: { $0.contains(":") }) {
            throw FHIRError(.invalidRequest, code: .notSupported,
                            "The modifier of \(modified) is not supported: search by identifier=system|value.", location: FHIRIssue.http(modified))
        }
        if let first = unsupported.first, ContentNegotiation.wantsStrictHandling(request.headers) {
            throw FHIRError(.invalidRequest, code: .notSupported, "Search parameter \(first) is not supported.", location: FHIRIssue.http(first))
        }
        guard tokens.count == 1, let token = tokens.first else {
            throw FHIRError(.invalidRequest, code: .required,
                            "Search Practitioner by exactly one identifier: ?identifier=system|value.", location: FHIRIssue.http("identifier"))
        }
        let candidates: [RegulatorIdentifier]
        if token.contains("|") {
            candidates = [try IdentifierToken.parse(token)]
        } else {
            candidates = RegulatorIdentifier.Kind.allCases.compactMap { RegulatorIdentifier(kind: $0, value: token) }
        }
        let accounts = try await directory.snapshots(holdingAnyOf: candidates)
        let base = baseURL(request)
        var bundle: JSONObject = ["resourceType": .string("Bundle")]
        bundle["type"] = .string("searchset")
        bundle["total"] = .number(String(accounts.count))
        let selfQuery = "identifier=" + (token.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed.subtracting(CharacterSet(charactersIn: "|&+="))) ?? token)
        bundle["link"] = .array([.object(["relation": .string("self"), "url": .string("\(base)/Practitioner?\(selfQuery)")])])
        if !accounts.isEmpty {
            bundle["entry"] = .array(accounts.map { account in
                var entry: JSONObject = ["fullUrl": .string("\(base)/Practitioner/\(account.id)")]
                entry["resource"] = PractitionerRenderer.resource(account)
                entry["search"] = .object(["mode": .string("match")])
                return .object(entry)
            })
        }
        return FHIRResponses.json(.object(bundle), status: .ok, contentType: negotiated.contentType, pretty: negotiated.pretty)
    }
}

