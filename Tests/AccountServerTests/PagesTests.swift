@testable import AccountServer
@testable import Habilitation
import Testing

/// What the regulator's pages say and how, checked on the HTML itself: French typography,
/// errors tied to their fields, the time limits in the deployment's values, the terms'
/// structure.
@Suite("Regulator pages")
struct PagesTests {
    static let nbsp = "\u{00A0}", narrow = "\u{202F}"

    @Test func frenchPunctuationGetsNoBreakSpacesInTextOnly() {
        #expect(FrenchTypography.apply(toText: "Première connexion ? Oui : « Mot de passe oublié » ; voilà !")
                == "Première connexion\(Self.narrow)? Oui\(Self.nbsp): «\(Self.nbsp)Mot de passe oublié\(Self.nbsp)»\(Self.narrow); voilà\(Self.narrow)!")
        // No space before: nothing added (a URL, a time).
        #expect(FrenchTypography.apply(toText: "https://a.example/x?y=1 à 10:30") == "https://a.example/x?y=1 à 10:30")
        let page = #"<p title="a : b">x : y</p><script>a ? b : c;</script><style>a :hover{}</style><p>z ?</p>"#
        let converted = FrenchTypography.apply(toHTML: page)
        #expect(converted
                == #"<p title="a : b">x"# + Self.nbsp + #": y</p><script>a ? b : c;</script><style>a :hover{}</style><p>z"# + Self.narrow + "?</p>", "\(converted.unicodeScalars.map { $0.isASCII ? String($0) : "<\(String($0.value, radix: 16))>" }.joined())")
    }

    @Test func everyPageSetsItsTypography() {
        let check = HabilitationCheck(session: nil, account: nil, pendingActions: [], decision: .denied([.noLiveSession]))
        let pages: [(String, HTML)] = [
            ("sign-in", Pages.signIn(csrf: "t", fromSAS: true, error: true, notice: .refusal("Lien expiré : recommencez."))),
            ("code", Pages.secondFactor(csrf: "t", error: true, name: "Jules MARIUS")),
            ("enrolment", Pages.enrolTOTP(csrf: "t", qrSVG: "<svg></svg>", secret: "ABCDEFGH", uri: "otpauth://x", error: .replaced, name: "Jules MARIUS")),
            ("codes", Pages.recoveryCodes(csrf: "t", codes: ["AAAAA-BBBBB"], reissued: true)),
            ("terms", Pages.cgu(csrf: "t", version: "v1", text: "Article : un ; deux ?", error: .versionChanged, name: "Jules MARIUS")),
            ("forgotten", Pages.forgotPassword(csrf: "t")), ("sent", Pages.forgotPasswordSent),
            ("reset", Pages.resetPassword(csrf: "t", token: "j", errors: ["Trop court : 3 caractères."])),
            ("done", Pages.resetDone), ("invalid", Pages.resetInvalid),
            ("account", Pages.account(csrf: "t", name: "Jules MARIUS", email: "j@example.org", check: check)),
            ("refused", Pages.accessRefused(csrf: "t", check: check)), ("signed out", Pages.signedOut),
            ("error", Pages.error("Erreur", "Une erreur : réessayez ?")),
        ]
        for (name, html) in pages {
            let page = html.description
            // Outside the script and the markup, no ordinary space before : ; ? ! », none after «.
            let text = page.replacingOccurrences(of: #"<script>[\s\S]*?</script>|<[^>]*>"#, with: "", options: .regularExpression)
            let wrong = text.ranges(of: #/[ ][:;?!»]|«[ ]/#).map { String(text[$0]) }
            #expect(wrong.isEmpty, "\(name): \(wrong)")
            // The script keeps its ASCII (its CSP hash is of the constant).
            #expect(page.contains("<script>\(Pages.formScript)</script>"), "\(name)")
        }
    }

    @Test func aRefusedFormSaysSoInItsTitleAndOnItsField() {
        let refused = Pages.signIn(csrf: "t", fromSAS: false, error: true, email: "jules@example.org").description
        #expect(refused.contains("<title>Erreur\(Self.nbsp): Connexion — Espace régulateur</title>"))
        #expect(refused.contains(#"value="jules@example.org" required>"#), "the address is given back, untouched")
        #expect(refused.contains(#"autocomplete="current-password" required aria-invalid="true" aria-describedby="erreur" autofocus>"#))
        #expect(refused.contains("même avec le bon mot de passe") && refused.contains("ne lève pas ce blocage"))
        let fresh = Pages.signIn(csrf: "t", fromSAS: false, error: false).description
        #expect(fresh.contains("<title>Connexion — Espace régulateur</title>") && !fresh.contains("aria-invalid"))

        let code = Pages.secondFactor(csrf: "t", error: true).description
        #expect(code.contains("<title>Erreur") && code.contains(#"required aria-invalid="true" aria-describedby="erreur" autofocus>"#))
        let reset = Pages.resetPassword(csrf: "t", token: "j", errors: ["Trop court."]).description
        #expect(reset.contains(#"aria-describedby="erreur regles-mdp" aria-invalid="true" autofocus"#))
        #expect(!reset.contains(#"autocomplete="username""#), "a leaked link does not give the sign-in address")
        #expect(Pages.resetPassword(csrf: "t", token: "j", errors: []).description.contains(#"aria-describedby="regles-mdp">"#))
        let terms = Pages.cgu(csrf: "t", version: "v1", text: "x", error: .notChecked).description
        #expect(terms.contains(#"id="accepte" required aria-invalid="true""#))
    }

    @Test func theTimeLimitsAreThoseOfTheDeployment() {
        let limits = Pages.Limits(intentMinutes: 7, flowMinutes: 11, idleMinutes: 25, absoluteHours: 9, lockoutFailures: 4, lockoutMinutes: 20)
        #expect(Pages.signIn(csrf: "t", fromSAS: true, error: false, limits: limits).description.contains("Saisissez votre mot de passe dans les 7 minutes qui suivent votre arrivée depuis la plateforme SAS."))
        #expect(Pages.signIn(csrf: "t", fromSAS: false, error: true, limits: limits).description.contains("Après 4 échecs, la connexion au compte est bloquée au moins 20 minutes"))
        #expect(Pages.secondFactor(csrf: "t", error: false, limits: limits).description.contains("Vous disposez de 11 minutes"))
        let account = Pages.account(csrf: "t", name: "Jules MARIUS", email: "j@example.org",
                                    check: HabilitationCheck(session: nil, account: nil, pendingActions: [], decision: .denied([.noLiveSession])), limits: limits)
        #expect(account.description.contains("après 25 minutes d’inactivité, et au plus tard 9 heures après la connexion"))
    }

    @Test func theTermsKeepTheirHeadingsAndLists() {
        let page = Pages.cgu(csrf: "t", version: "v1", text: "# Article 1\n\nLe service…\nsuite.\n\n- un\n- deux", error: nil).description
        #expect(page.contains("<h2>Article 1</h2><p>Le service…\nsuite.</p><ul><li>un</li><li>deux</li></ul>"))
        // The same file written on Windows.
        let crlf = Pages.cgu(csrf: "t", version: "v1", text: "# Article 1\r\n\r\nLe service…\r\nsuite.\r\n\r\n- un\r\n- deux", error: nil).description
        #expect(crlf.contains("<h2>Article 1</h2><p>Le service…\nsuite.</p><ul><li>un</li><li>deux</li></ul>"))
        #expect(page.contains(#"tabindex="0" role="region" aria-label="Texte des conditions générales d’utilisation""#))
        #expect(!page.contains("J’accepte les conditions générales d’utilisation (version"), "no hash read out in the label")
    }

    /// The deployment's notices at the foot of the pages: only the links configured, their
    /// addresses escaped, the accessibility status said in the link (RGAA), French typography;
    /// a link that is not absolute https, or a status without its statement, refused at start.
    @Test func theFooterLinksTheDeploymentsNotices() throws {
        let footer = try PageFooter(privacyNotice: "https://agenda.example/confidentialite?x=1&y=\"2\"", legalNotice: nil,
                                    accessibilityStatement: "https://agenda.example/accessibilite", accessibilityCompliance: "partial")
        let page = PageFooter.$current.withValue(footer) { Pages.layout("Connexion", "<p>x</p>").text }
        #expect(page.contains(#"<a href="https://agenda.example/confidentialite?x=1&amp;y=&quot;2&quot;" id="lien-donnees-personnelles">Données personnelles</a>"#), "\(page)")
        #expect(page.contains("Accessibilité\(Self.nbsp): partiellement conforme</a>") && !page.contains("lien-mentions-legales"), "\(page)")
        #expect(page.range(of: "</main>")!.lowerBound < page.range(of: "<footer>")!.lowerBound, "after the main content, outside it")
        #expect(!Pages.layout("Connexion", "<p>x</p>").text.contains("<footer"), "no footer without a configured link")
        // Fixed pages are built per request, not once: one first built without a footer (by
        // another server, in a test) is not served without it.
        for build in [{ Pages.resetInvalid }, { Pages.resetDone }, { Pages.forgotPasswordSent }, { Pages.signedOut }, { Pages.signedOutProviderStillOpen }] as [() -> HTML] {
            #expect(!build().text.contains("<footer"))
            #expect(PageFooter.$current.withValue(footer) { build().text }.contains("lien-donnees-personnelles"))
        }
        let accessibility = try PageFooter(privacyNotice: nil, legalNotice: nil, accessibilityStatement: "https://a.example/a", accessibilityCompliance: nil)
        #expect(accessibility.html.text.contains(">Accessibilité</a>"))
        for (privacy, statement, compliance) in [("http://agenda.example/p", nil, nil), ("javascript:alert(1)", nil, nil), ("/confidentialite", nil, nil),
                                                 ("https://", nil, nil), (nil, nil, "partial"), (nil, "https://a.example/a", "partielle")] as [(String?, String?, String?)] {
            #expect(throws: ConfigurationError.self, "\(String(describing: privacy)) \(String(describing: statement)) \(String(describing: compliance))") {
                try PageFooter(privacyNotice: privacy, legalNotice: nil, accessibilityStatement: statement, accessibilityCompliance: compliance)
            }
        }
    }
}

