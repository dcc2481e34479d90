import Foundation
import Hummingbird

/// The deployment's notices, linked at the foot of every regulator page: the privacy notice
/// (GDPR articles 13–14: the person must be able to reach it where the data is collected),
/// the legal notice (mentions légales) and the accessibility statement with its compliance
/// status, which RGAA wants said in the link itself (« Accessibilité : partiellement
/// conforme »). What they say is the vendor's; the server only links them.
struct PageFooter: Sendable, Equatable {
    /// How far the pages comply with RGAA, as the statement says.
    enum Compliance: String, Sendable, CaseIterable {
        case full, partial, none

        var french: String {
            switch self {
            case .full: "totalement conforme"
            case .partial: "partiellement conforme"
            case .none: "non conforme"
            }
        }
    }

    var privacyNotice: String?
    var legalNotice: String?
    var accessibilityStatement: String?
    var accessibilityCompliance: Compliance?

    init() {}

    /// Each URL must be absolute `https` with a host: a link on a sign-in page to anything
    /// else (a `javascript:` URL, a relative path that the agenda's proxy serves) is refused at
    /// start.
    init(privacyNotice: String?, legalNotice: String?, accessibilityStatement: String?, accessibilityCompliance: String?) throws {
        func checked(_ value: String?, _ flag: String) throws -> String? {
            guard let value = value?.trimmingCharacters(in: .whitespaces), !value.isEmpty else { return nil }
            guard let url = URL(string: value), url.scheme == "https", let host = url.host, !host.isEmpty,
                  !value.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
                throw ConfigurationError(description: "--\(flag) must be an absolute https:// URL")
            }
            return value
        }
        self.privacyNotice = try checked(privacyNotice, "privacy-notice-url")
        self.legalNotice = try checked(legalNotice, "legal-notice-url")
        self.accessibilityStatement = try checked(accessibilityStatement, "accessibility-statement-url")
        if let accessibilityCompliance {
            guard let compliance = Compliance(rawValue: accessibilityCompliance) else {
                throw ConfigurationError(description: "--accessibility-compliance must be full, partial or none")
            }
            guard self.accessibilityStatement != nil else {
                throw ConfigurationError(description: "--accessibility-compliance goes with --accessibility-statement-url (the status links to the statement)")
            }
            self.accessibilityCompliance = compliance
        }
    }

    var isEmpty: Bool { privacyNotice == nil && legalNotice == nil && accessibilityStatement == nil }

    /// The footer's HTML, or nothing without any link.
    var html: HTML {
        guard !isEmpty else { return "" }
        var items: [HTML] = []
        if let privacyNotice { items.append("<li><a href=\"\(privacyNotice)\" id=\"lien-donnees-personnelles\">Données personnelles</a></li>") }
        if let legalNotice { items.append("<li><a href=\"\(legalNotice)\" id=\"lien-mentions-legales\">Mentions légales</a></li>") }
        if let accessibilityStatement {
            let text = accessibilityCompliance.map { "Accessibilité : \($0.french)" } ?? "Accessibilité"
            items.append("<li><a href=\"\(accessibilityStatement)\" id=\"lien-accessibilite\">\(text)</a></li>")
        }
        return "<footer><ul class=\"pied\">\(HTML(raw: items.map(\.text).joined()))</ul></footer>"
    }

    /// The footer of the page being built: set for the request by ``PageFooterMiddleware``,
    /// read by ``Pages/layout(_:_:error:)``. A task-local, not a parameter of every page
    /// function: the pages stay plain functions of what they show, and a page built outside a
    /// regulator request (the admin pages, forward-auth's answers) has none.
    @TaskLocal static var current = PageFooter()
}

/// Sets the deployment's footer for every page the web listener's handlers build.
struct PageFooterMiddleware<Context: RequestContext>: RouterMiddleware {
    let footer: PageFooter

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard !footer.isEmpty else { return try await next(request, context) }
        return try await PageFooter.$current.withValue(footer) { try await next(request, context) }
    }
}
