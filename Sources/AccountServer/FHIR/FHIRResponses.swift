import Accounts
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Storage

/// Builds FHIR responses: JSON bodies, OperationOutcomes, and the status of each
/// ``FHIRError/Category``.
enum FHIRResponses {
    static func json(_ value: JSONValue, status: HTTPResponse.Status, contentType: String = ContentNegotiation.fhirJSON,
                     pretty: Bool = false, headers: HTTPFields = [:]) -> Response {
        var fields = headers
        fields[.contentType] = "\(contentType); charset=utf-8"
        let bytes = JSONWriter(pretty: pretty).encode(value)
        return Response(status: status, headers: fields, body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
    }

    static func status(for category: FHIRError.Category) -> HTTPResponse.Status {
        switch category {
        case .invalidContent, .invalidRequest: return .badRequest
        case .unprocessable: return .unprocessableContent
        case .conflict: return .conflict
        case .preconditionFailed: return .preconditionFailed
        case .notFound: return .notFound
        case .methodNotAllowed: return .methodNotAllowed
        case .unsupportedMediaType: return .unsupportedMediaType
        case .notAcceptable: return .notAcceptable
        case .payloadTooLarge: return .contentTooLarge
        case .internalError: return .internalServerError
        case .forbidden: return .forbidden
        case .badGateway: return .badGateway
        case .gatewayTimeout: return .gatewayTimeout
        case .notImplemented: return .notImplemented
        case .serviceUnavailable: return .serviceUnavailable
        }
    }

    static func outcome(_ error: FHIRError, contentType: String = ContentNegotiation.fhirJSON, pretty: Bool = false) -> Response {
        json(OperationOutcome.resource(error.reportedIssues()), status: status(for: error.category), contentType: contentType, pretty: pretty,
             headers: outcomeHeaders(error))
    }

    private static func outcomeHeaders(_ error: FHIRError) -> HTTPFields {
        var headers: HTTPFields = [:]
        if case .methodNotAllowed(let allowed) = error.category {
            headers[.allow] = allowed.joined(separator: ", ")
        }
        if error.category == .serviceUnavailable {
            headers[.retryAfter] = "1"
        }
        return headers
    }

    /// ``outcome(_:pretty:)`` as parts, for answers written outside the router (the relay's).
    static func outcomeParts(_ error: FHIRError) -> (status: HTTPResponse.Status, headers: HTTPFields, body: ByteBuffer) {
        var headers = outcomeHeaders(error)
        headers[.contentType] = "\(ContentNegotiation.fhirJSON); charset=utf-8"
        let bytes = JSONWriter(pretty: false).encode(OperationOutcome.resource(error.reportedIssues()))
        return (status(for: error.category), headers, ByteBuffer(bytes: bytes))
    }

    /// RFC 9110 IMF-fixdate, for `Last-Modified`.
    static func httpDate(_ date: Date) -> String {
        var time = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        gmtime_r(&time, &parts)
        // Written digit by digit: `String(format:)` went through Foundation's format parser
        // and was 2 % of a PUT's CPU (profile, 2026-12-01).
        var text = ""
        text.reserveCapacity(29)
        text += Self.days[Int(parts.tm_wday)]
        text += ", "
        Self.append(Int(parts.tm_mday), digits: 2, to: &text)
        text += " "
        text += Self.months[Int(parts.tm_mon)]
        text += " "
        Self.append(Int(parts.tm_year) + 1900, digits: 4, to: &text)
        text += " "
        Self.append(Int(parts.tm_hour), digits: 2, to: &text)
        text += ":"
        Self.append(Int(parts.tm_min), digits: 2, to: &text)
        text += ":"
        Self.append(Int(parts.tm_sec), digits: 2, to: &text)
        text += " GMT"
        return text
    }

    private static let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    private static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    /// `value` in decimal, zero-padded to `digits` (a wider value is written whole).
    private static func append(_ value: Int, digits: Int, to text: inout String) {
        let decimal = String(value)
        if decimal.count < digits { text += String(repeating: "0", count: digits - decimal.count) }
        text += decimal
    }
}

/// Turns every error into an OperationOutcome: FHIR refusals keep their status, an
/// unmatched method on a known path becomes 405 with `Allow`, an unknown path 404, and
/// anything unexpected a 500 that reveals nothing internal. Also stamps `X-Request-ID`.
struct FHIRErrorMiddleware: RouterMiddleware {
    typealias Context = FHIRRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var response: Response
        func outcome(_ error: FHIRError) -> Response {
            let (type, pretty) = Self.errorFormat(request, error)
            return FHIRResponses.outcome(error, contentType: type, pretty: pretty)
        }
        do {
            response = try await next(request, context)
        } catch let error as FHIRError {
            response = outcome(error)
        } catch let error as HTTPError {
            response = outcome(Self.translate(error, request: request))
        } catch is NIOTooManyBytesError {
            response = outcome(FHIRError(.payloadTooLarge, code: .tooLong, "The body exceeds \(FHIRLimits.maximumBodyBytes) bytes."))
        } catch let error as StorageError where error.isTransient {
            context.logger.error("database unavailable on the FHIR endpoint", metadata: ["error": "\(error)"])
            if case .outcomeUnknown = error {
                response = outcome(.databaseOutcomeUnknown)
            } else {
                response = outcome(.databaseUnavailable)
            }
        } catch {
            context.logger.error("unexpected error on the FHIR endpoint", metadata: ["error": "\(error)"])
            response = outcome(FHIRError(.internalError, code: .exception, "Internal error (request \(context.requestID)); nothing was changed."))
        }
        response.headers[.requestID] = context.requestID
        return response
    }

    /// What an error is written as: the type and layout the request negotiated (`_format`,
    /// `Accept`, `_pretty`), so a client that asked for `application/json+fhir` reads its
    /// errors in it too; the default when the request's own negotiation is what failed.
    static func errorFormat(_ request: Request, _ error: FHIRError) -> (type: String, pretty: Bool) {
        guard error.category != .notAcceptable, let query = try? QueryParameters(query: request.uri.query),
              let type = try? ContentNegotiation.responseType(format: query.first("_format"), accept: request.headers[.accept]) else {
            return (ContentNegotiation.fhirJSON, false)
        }
        return (type, query.first("_pretty") == "true")
    }

    static func translate(_ error: HTTPError, request: Request) -> FHIRError {
        switch error.status {
        case .notFound:
            if let allowed = PractitionerController.allowedMethods(path: request.uri.path) {
                return FHIRError(.methodNotAllowed(allowed: allowed), code: .notSupported,
                                 "\(request.method) is not supported on \(request.uri.path); allowed: \(allowed.joined(separator: ", ")).")
            }
            return FHIRError(.notFound, code: .notFound, "No FHIR interaction at \(request.uri.path): see GET /metadata for what this server supports.")
        case .contentTooLarge:
            return FHIRError(.payloadTooLarge, code: .tooLong, "The body exceeds \(FHIRLimits.maximumBodyBytes) bytes.")
        case .badRequest:
            return FHIRError(.invalidRequest, code: .invalid, "Bad request: \(error.body ?? "malformed request").")
        default:
            return FHIRError(.internalError, code: .exception, "HTTP \(error.status.code).")
        }
    }
}

/// Reads an HTTP-date (RFC 9110 §5.6.7) in the three forms a recipient must accept: the
/// IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT`, the obsolete RFC 850 form
/// `Sunday, 06-Nov-94 08:49:37 GMT` and asctime's `Sun Nov  6 08:49:37 1994`.
enum HTTPDate {
    static func parse(_ text: String) -> Date? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard !trimmed.isEmpty, trimmed.count <= 64 else { return nil }
        // asctime pads a one-digit day with a space.
        let collapsed = trimmed.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
        for format in ["EEE, dd MMM yyyy HH:mm:ss 'GMT'", "EEEE, dd-MMM-yy HH:mm:ss 'GMT'", "EEE MMM d HH:mm:ss yyyy"] {
            // A formatter per call: the field is rare, and DateFormatter is not Sendable.
            let formatter = DateFormatter()
            formatter.locale = Locale(identifier: "en_US_POSIX")
            formatter.timeZone = TimeZone(identifier: "GMT")
            formatter.dateFormat = format
            formatter.isLenient = false
            if let date = formatter.date(from: collapsed) { return date }
        }
        return nil
    }
}
