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
        let page = Pages.signIn(csrf: "t", fromSAS: true, error: false).description
        #expect(page.contains("Première connexion\(Self.narrow)?") && !page.contains(" ?<") && !page.contains(" : "))
        // The script keeps its ASCII.
        #expect(page.contains(#"if (form.dataset.envoye === "oui") { event.preventDefault(); return; }"#))
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
        let reset = Pages.resetPassword(csrf: "t", token: "j", errors: ["Trop court."], email: "jules@example.org").description
        #expect(reset.contains(#"aria-describedby="erreur regles-mdp" aria-invalid="true" autofocus"#))
        #expect(reset.contains(#"<input type="text" autocomplete="username" value="jules@example.org" hidden>"#))
        #expect(Pages.resetPassword(csrf: "t", token: "j", errors: []).description.contains(#"aria-describedby="regles-mdp">"#))
        let terms = Pages.cgu(csrf: "t", version: "v1", text: "x", error: .notChecked).description
        #expect(terms.contains(#"id="accepte" required aria-invalid="true""#))
    }

    @Test func theTimeLimitsAreThoseOfTheDeployment() {
        let limits = Pages.Limits(intentMinutes: 7, flowMinutes: 11, idleMinutes: 25, absoluteHours: 9, lockoutFailures: 4, lockoutMinutes: 20)
        #expect(Pages.signIn(csrf: "t", fromSAS: true, error: false, limits: limits).description.contains("Ce lien reste valable 7 minutes."))
        #expect(Pages.signIn(csrf: "t", fromSAS: false, error: true, limits: limits).description.contains("Après 4 échecs, la connexion au compte est bloquée au moins 20 minutes"))
        #expect(Pages.secondFactor(csrf: "t", error: false, limits: limits).description.contains("Vous disposez de 11 minutes"))
        let account = Pages.account(csrf: "t", name: "Jules MARIUS", email: "j@example.org",
                                    check: HabilitationCheck(session: nil, account: nil, pendingActions: [], decision: .denied([.noLiveSession])), limits: limits)
        #expect(account.description.contains("après 25 minutes d’inactivité, et au plus tard 9 heures après la connexion"))
    }

    @Test func theTermsKeepTheirHeadingsAndLists() {
        let page = Pages.cgu(csrf: "t", version: "v1", text: "# Article 1\n\nLe service…\nsuite.\n\n- un\n- deux", error: nil).description
        #expect(page.contains("<h2>Article 1</h2><p>Le service…\nsuite.</p><ul><li>un</li><li>deux</li></ul>"))
        #expect(page.contains(#"tabindex="0" role="region" aria-label="Texte des conditions générales d’utilisation""#))
        #expect(!page.contains("J’accepte les conditions générales d’utilisation (version"), "no hash read out in the label")
    }
}
