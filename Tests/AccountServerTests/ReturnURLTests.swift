@testable import AccountServer
import Testing

/// Where a sign-in may send the browser back to: an allowed origin, port included.
@Suite("Return URLs")
struct ReturnURLTests {
    static let configuration = WebConfiguration(publicURL: "https://comptes.example", acceptedOrigins: ["sas"],
                                                allowedReturnHosts: ["agenda.example", "rdv.example:8443"], cguText: "", cguVersion: "1", totpIssuer: "test")

    /// `host` allows the https port only; another port must be listed as `host:port` (another
    /// port of an allowed host may be another service, which must not receive the browser).
    @Test func anAllowedHostIsAnOriginPortIncluded() {
        let accepted = ["https://agenda.example/rdv/42?origin=sas", "https://agenda.example:443/rdv", "https://AGENDA.example/x",
                        "https://rdv.example:8443/", "/compte", "/compte?origin=sas"]
        for url in accepted { #expect(Self.configuration.validatedReturnURL(url) != nil, "\(url)") }
        let refused = ["https://agenda.example:8443/rdv", "https://agenda.example:1/", "https://rdv.example/", "https://rdv.example:443/",
                       "http://agenda.example/", "https://evil.example/", "//agenda.example/", "/\\evil.example", "https://user@agenda.example/",
                       "https://agenda.example.evil.example/", "javascript:alert(1)"]
        for url in refused { #expect(Self.configuration.validatedReturnURL(url) == nil, "\(url)") }
        #expect(Self.configuration.validatedReturnURL("/compte") == "https://comptes.example/compte")
    }
}
