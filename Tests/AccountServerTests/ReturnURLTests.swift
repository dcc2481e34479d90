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

    /// The pages' CSP `form-action` names every allowed return origin but this one (the
    /// sign-in's last form is redirected there); the headless browser test sees it work.
    @Test func theAllowedReturnOriginsAreFormTargets() {
        #expect(Self.configuration.returnOrigins == ["https://agenda.example", "https://rdv.example:8443"])
        var own = Self.configuration
        own.allowedReturnHosts = ["comptes.example", "comptes.example:443", "agenda.example:443", "agenda.example"]
        #expect(own.returnOrigins == ["https://agenda.example"])
    }

    /// The return URL travels sealed in the intent's cookie: bounded (2,048 bytes with the
    /// public URL), and a local path is a URL too (no quote, space or control character that
    /// would swell it, or end up in a `Location`).
    @Test func aReturnURLIsBoundedAndWellFormed() {
        let limit = WebConfiguration.maximumReturnURLLength - Self.configuration.publicURL.utf8.count
        #expect(Self.configuration.validatedReturnURL("/" + String(repeating: "a", count: limit - 1)) != nil)
        #expect(Self.configuration.validatedReturnURL("/" + String(repeating: "a", count: limit)) == nil)
        #expect(Self.configuration.validatedReturnURL("https://agenda.example/" + String(repeating: "a", count: 2_100)) == nil)
        #expect(Self.configuration.validatedReturnURL("https://agenda.example/" + String(repeating: "é", count: 300)) != nil)
        #expect(Self.configuration.validatedReturnURL("https://agenda.example/" + String(repeating: "é", count: 400)) == nil, "bounded once encoded")
        for path in ["/\"compte", "/a b", "/a\r\nSet-Cookie:x", "/a\u{7F}"] {
            #expect(Self.configuration.validatedReturnURL(path) == nil, "\(path.debugDescription)")
        }
    }
}
