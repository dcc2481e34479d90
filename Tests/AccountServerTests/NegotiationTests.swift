@testable import AccountServer
import Accounts
import Foundation
import HTTPTypes
import Testing

@Suite("Query parsing and content negotiation")
struct NegotiationTests {
    /// `Last-Modified` (and the mail `Date`) in RFC 9110's IMF-fixdate.
    @Test func httpDates() {
        #expect(FHIRResponses.httpDate(Date(timeIntervalSince1970: 784_111_777)) == "Sun, 06 Nov 1994 08:49:37 GMT")  // RFC 9110, 5.6.7
        #expect(FHIRResponses.httpDate(Date(timeIntervalSince1970: 0.999)) == "Thu, 01 Jan 1970 00:00:00 GMT")
        #expect(FHIRResponses.httpDate(Date(timeIntervalSince1970: 1_798_761_599)) == "Thu, 31 Dec 2026 23:59:59 GMT")
    }

    @Test func parsesRawAndEncodedBars() throws {
        for query in ["identifier=urn:oid:1.2.250.1.71.4.2.1|810002673899", "identifier=urn%3Aoid%3A1.2.250.1.71.4.2.1%7C810002673899"] {
            let parameters = try QueryParameters(query: query)
            let token = try #require(parameters.first("identifier"))
            #expect(try IdentifierToken.parse(token) == .national(NationalID("810002673899")!))
        }
    }

    /// Refused naming the parameter whose value is broken (`http.identifier`); a broken
    /// name cannot be named.
    @Test func refusesBrokenEscapesAndInvalidUTF8() {
        func locations(_ query: String) -> [[String]]? {
            do {
                _ = try QueryParameters(query: query)
                return nil
            } catch {
                return error.issues.map(\.location)
            }
        }
        for query in ["identifier=%7", "identifier=%GG", "identifier=%C3%28", "_format=json&identifier=x%ZZ"] {
            #expect(locations(query) == [["http.identifier"]], "\(query)")
        }
        #expect(locations("ident%GGifier=1") == [[]])
    }

    @Test func identifierTokens() throws {
        #expect(throws: FHIRError.self) { try IdentifierToken.parse("810002673899") }
        #expect(throws: FHIRError.self) { try IdentifierToken.parse("urn:oid:1.2.3|810002673899") }
        #expect(throws: FHIRError.self) { try IdentifierToken.parse("urn:oid:1.2.250.1.71.4.2.1|") }
        #expect(throws: FHIRError.self) { try IdentifierToken.parse("urn:oid:1.2.250.1.213.3.6|810002673899") }
        #expect(try IdentifierToken.parse("urn:oid:1.2.250.1.213.3.6|B6E39355-8A61-4556-B340-36F7B95FEC6A").value == "b6e39355-8a61-4556-b340-36f7b95fec6a")
    }

    @Test func responseTypes() throws {
        #expect(try ContentNegotiation.responseType(format: nil, accept: nil) == "application/fhir+json")
        #expect(try ContentNegotiation.responseType(format: nil, accept: "application/json+fhir") == "application/json+fhir")
        #expect(try ContentNegotiation.responseType(format: nil, accept: "text/html, */*;q=0.8") == "application/fhir+json")
        #expect(try ContentNegotiation.responseType(format: "json", accept: "application/xml") == "application/fhir+json")
        #expect(throws: FHIRError.self) { try ContentNegotiation.responseType(format: "xml", accept: nil) }
        #expect(throws: FHIRError.self) { try ContentNegotiation.responseType(format: nil, accept: "application/fhir+xml") }
        #expect(throws: FHIRError.self) { try ContentNegotiation.responseType(format: nil, accept: "application/fhir+json;q=0") }
    }

    @Test func requestContentTypes() throws {
        for accepted in ["application/fhir+json", "application/json", "application/json+fhir; charset=UTF-8", "Application/JSON"] {
            try ContentNegotiation.checkRequestContentType([.contentType: accepted])
        }
        for refused in ["text/plain", "application/fhir+xml", "application/json; charset=latin1"] {
            #expect(throws: FHIRError.self) { try ContentNegotiation.checkRequestContentType([.contentType: refused]) }
        }
        #expect(throws: FHIRError.self) { try ContentNegotiation.checkRequestContentType([:]) }
    }

    @Test func knownPathsGive405() {
        #expect(PractitionerController.allowedMethods(path: "/Practitioner") == ["GET", "POST", "PUT"])
        #expect(PractitionerController.allowedMethods(path: "/Practitioner/abc") == ["GET"])
        #expect(PractitionerController.allowedMethods(path: "/metadata") == ["GET"])
        #expect(PractitionerController.allowedMethods(path: "/Patient") == nil)
        #expect(PractitionerController.allowedMethods(path: "/Practitioner/a/b") == nil)
    }
}
