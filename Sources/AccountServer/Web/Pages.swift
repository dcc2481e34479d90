import Foundation
import Accounts
import Habilitation

/// The regulator-facing pages, in French. Every page is complete HTML5 with stable ids that
/// tests and assistive technologies can rely on.
enum Pages {
    /// The time limits a regulator meets, said on the pages where they apply (RGAA 13.1:
    /// a limit the user cannot extend is announced beforehand), in the deployment's values.
    struct Limits: Sendable, Equatable {
        /// From the SAS link to the password step.
        var intentMinutes = 10
        /// From the password to the last step of the sign-in.
        var flowMinutes = 15
        var idleMinutes = 30
        var absoluteHours = 12
        /// Failures that lock the sign-in, and the first lock's length.
        var lockoutFailures = 5
        var lockoutMinutes = 15
    }

    /// `error`: the page answers a form it refuses; its title says so first (the title is
    /// what a screen reader announces on the new page, where an alert already present is
    /// often not read).
    static func layout(_ title: String, _ content: HTML, error: Bool = false) -> HTML {
        let page: HTML = """
        <!doctype html>
        <html lang="fr">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>\(error ? "Erreur : " : "")\(title) — Espace régulateur</title>
        <link rel="stylesheet" href="/static/style.css">
        <script>\(HTML(raw: formScript))</script>
        </head>
        <body>
        <main>
        <h1>\(title)</h1>
        \(content)
        </main>
        \(PageFooter.current.html)
        </body>
        </html>
        """
        return HTML(raw: FrenchTypography.apply(toHTML: page.text))
    }

    /// The attributes of a field the page's error is about: marked invalid, described by the
    /// error, and focused, so that the regulator lands on it with the reason read out.
    static func invalid(_ isInvalid: Bool, describedBy: String = "erreur") -> HTML {
        isInvalid ? " aria-invalid=\"true\" aria-describedby=\"\(describedBy)\" autofocus" : ""
    }

    static func csrfField(_ token: String) -> HTML {
        "<input type=\"hidden\" name=\"csrf\" value=\"\(token)\">"
    }

    /// A message above the sign-in form: information, or a refusal of what was just sent.
    enum Notice: Equatable {
        case info(String)
        case refusal(String)
    }

    /// `providerClick`: the click token of the Pro Santé Connect link (``WebController/providerClick(formToken:)``), nil without the provider.
    /// `email`: what the refused form held, given back so that only the password is typed again.
    static func signIn(csrf: String, fromSAS: Bool, error: Bool, notice: Notice? = nil, providerClick: String? = nil,
                       limits: Limits = Limits(), email: String = "") -> HTML {
        let banner: HTML = fromSAS
            ? "<p class=\"info\" id=\"origine-sas\">Vous arrivez depuis la plateforme SAS : une fois la connexion établie, vous disposerez de l’habilitation régulateur. Saisissez votre mot de passe dans les \(limits.intentMinutes) minutes qui suivent votre arrivée depuis la plateforme SAS.</p>"
            : ""
        // The same words whatever went wrong (no enumeration), with what a lock means: the
        // right password is refused until it ends, and a new password does not lift it.
        let alert: HTML = error
            ? "<p class=\"error\" role=\"alert\" id=\"erreur\">Adresse électronique ou mot de passe incorrect. Après \(limits.lockoutFailures) échecs, la connexion au compte est bloquée au moins \(limits.lockoutMinutes) minutes, même avec le bon mot de passe, et choisir un nouveau mot de passe ne lève pas ce blocage.</p>"
            : ""
        let info: HTML = switch notice {
        case .info(let text)?: "<p class=\"info\" role=\"status\" id=\"message\">\(text)</p>"
        case .refusal(let text)?: "<p class=\"error\" role=\"alert\" id=\"message\">\(text)</p>"
        case nil: ""
        }
        // Pro Santé Connect first when it is configured: a link (a GET), so the provider is
        // reached by a plain navigation, never by a form posted elsewhere.
        let provider: HTML = providerClick.map { click in """
            <p><a class="bouton-psc" href="/connexion/psc?clic=\(click)" id="lien-psc">Se connecter avec Pro Santé Connect</a></p>
            <p class="hint" id="sans-psc">Se connecter sans Pro Santé Connect (compte sans identifiant national, sans carte CPS ni e-CPS) : avec votre adresse électronique et votre mot de passe.</p>
            """ } ?? ""
        let refused: Bool = if case .refusal? = notice { true } else { false }
        return layout("Connexion", """
            \(banner)\(info)\(alert)\(provider)
            <p id="premiere-connexion">Première connexion ? La plateforme SAS a créé votre compte sans vous communiquer de mot de passe : choisissez-en un avec « Mot de passe oublié ».</p>
            <form method="post" action="/connexion" id="form-connexion">
            \(csrfField(csrf))
            \(fromSAS ? "<input type=\"hidden\" name=\"sas\" value=\"1\">" : "" as HTML)
            <label for="email">Adresse électronique</label>
            <input id="email" name="email" type="email" autocomplete="username" value="\(email)" required\(invalid(error && email.isEmpty))>
            <label for="password">Mot de passe</label>
            <input id="password" name="password" type="password" autocomplete="current-password" required\(invalid(error && !email.isEmpty))>
            <button type="submit">Se connecter</button>
            </form>
            <p><a href="/mot-de-passe-oublie" id="lien-oubli">Mot de passe oublié ?</a></p>
            """, error: error || refused)
    }

    /// Whose sign-in a step belongs to, with the way out: a step left open on a shared
    /// workstation must not be finished by the next person (Keycloak shows the username on
    /// every step, with « Restart login »).
    static func signingIn(csrf: String, name: String?) -> HTML {
        guard let name else { return "" }
        return """
            <p class="hint" id="qui">Connexion de <strong id="qui-nom">\(name)</strong>.</p>
            <form method="post" action="/connexion/abandon" id="form-abandon">
            \(csrfField(csrf))
            <button type="submit" class="secondaire">Ce n’est pas vous ? Recommencer la connexion</button>
            </form>
            """
    }

    /// The sign-in's own limit, on each of its steps after the password.
    static func flowLimit(_ limits: Limits) -> HTML {
        "<p class=\"hint\" id=\"delai\">Vous disposez de \(limits.flowMinutes) minutes après la saisie du mot de passe pour terminer la connexion.</p>"
    }

    /// The code field takes a TOTP code (digits) or a recovery code (letters and digits): a
    /// text keyboard, or phones hide the letters.
    static func secondFactor(csrf: String, error: Bool, name: String? = nil, limits: Limits = Limits()) -> HTML {
        layout("Code de vérification", """
            \(error ? "<p class=\"error\" role=\"alert\" id=\"erreur\">Code incorrect ou déjà utilisé.</p>" : "" as HTML)
            <form method="post" action="/connexion/second-facteur" id="form-code">
            \(csrfField(csrf))
            <label for="code">Code à 6 chiffres de votre application d’authentification, ou un code de secours (XXXXX-XXXXX)</label>
            <input id="code" name="code" inputmode="text" autocapitalize="characters" spellcheck="false" autocomplete="one-time-code" required\(invalid(error))>
            <button type="submit">Valider</button>
            </form>
            \(flowLimit(limits))
            <p class="hint" id="telephone-perdu">Téléphone perdu et plus aucun code de secours ? Contactez le support de votre éditeur : il peut réinitialiser votre second facteur.</p>
            \(signingIn(csrf: csrf, name: name))
            """, error: error)
    }

    enum EnrolmentError { case wrongCode, replaced }

    static func enrolTOTP(csrf: String, qrSVG: String, secret: String, uri: String, error: EnrolmentError?, name: String? = nil,
                          limits: Limits = Limits()) -> HTML {
        let alert: HTML = switch error {
        case .wrongCode?: "<p class=\"error\" role=\"alert\" id=\"erreur\">Code incorrect : vérifiez l’heure de votre téléphone et réessayez.</p>"
        case .replaced?: "<p class=\"error\" role=\"alert\" id=\"erreur\">Une autre connexion à votre compte a remplacé la clé affichée : supprimez de votre application l’entrée que vous venez d’ajouter, puis scannez ce nouveau code QR.</p>"
        case nil: ""
        }
        let grouped = stride(from: 0, to: secret.count, by: 4).map { offset -> String in
            let start = secret.index(secret.startIndex, offsetBy: offset)
            return String(secret[start..<(secret.index(start, offsetBy: 4, limitedBy: secret.endIndex) ?? secret.endIndex)])
        }.joined(separator: " ")
        return layout("Double authentification", """
            <p>Pour protéger votre compte, la connexion demande un code à usage unique. Installez une application d’authentification sur votre téléphone (FreeOTP, Google Authenticator, Microsoft Authenticator…), scannez ce code QR, puis saisissez le code à 6 chiffres qu’elle affiche.</p>
            <div class="qr" id="qr-code">\(HTML(raw: qrSVG))</div>
            <p>Si vous ne pouvez pas scanner, saisissez cette clé dans l’application : <code id="cle-secrete">\(grouped)</code></p>
            <p><a href="\(uri)" id="lien-otpauth">Ouvrir dans l’application d’authentification</a></p>
            \(alert)
            <form method="post" action="/connexion/totp" id="form-totp">
            \(csrfField(csrf))
            <label for="code">Code à 6 chiffres</label>
            <input id="code" name="code" inputmode="numeric" autocomplete="one-time-code" required\(invalid(error != nil))>
            <button type="submit">Activer</button>
            </form>
            \(flowLimit(limits))
            \(signingIn(csrf: csrf, name: name))
            """, error: error != nil)
    }

    /// `reissued`: the enrolment's answer was sent again (a double click) and these codes
    /// replace the first set, which the regulator may or may not have seen.
    static func recoveryCodes(csrf: String, codes: [String], reissued: Bool = false, limits: Limits = Limits()) -> HTML {
        let notice: HTML = reissued
            ? "<p class=\"info\" role=\"status\" id=\"codes-remplaces\">Ces codes remplacent ceux d’un affichage précédent de cette page, qui ne sont plus valables.</p>"
            : ""
        return layout("Codes de secours", """
            \(notice)
            <p>Conservez ces 10 codes en lieu sûr : chacun permet une connexion si vous n’avez plus votre téléphone. Ils ne seront plus jamais affichés.</p>
            <ul id="codes-secours">\(codes.map { "<li><code>\($0)</code></li>" as HTML })</ul>
            <form method="post" action="/connexion/suite" id="form-suite">
            \(csrfField(csrf))
            <button type="submit">J’ai noté mes codes, continuer</button>
            </form>
            \(flowLimit(limits))
            """)
    }

    enum CGUError { case notChecked, versionChanged }

    /// The terms' text: paragraphs separated by blank lines; a paragraph whose first line
    /// starts with `# ` is a heading (an article's title), one whose lines all start with
    /// `- ` a list, so that a real CGU keeps its structure for assistive technologies.
    static func cgu(csrf: String, version: String, text: String, error: CGUError?, name: String? = nil, limits: Limits = Limits()) -> HTML {
        // A file written on Windows has CRLF line ends (its version, the text's hash, stays
        // that of the file as it is).
        let paragraphs = text.replacingOccurrences(of: "\r\n", with: "\n").components(separatedBy: "\n\n").map { block -> HTML in
            let lines = block.split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
            if lines.count == 1, let first = lines.first, first.hasPrefix("# ") {
                return "<h2>\(String(first.dropFirst(2)))</h2>"
            }
            if !lines.isEmpty, lines.allSatisfy({ $0.hasPrefix("- ") }) {
                return "<ul>\(lines.map { "<li>\(String($0.dropFirst(2)))</li>" as HTML })</ul>"
            }
            return "<p>\(block)</p>"
        }
        let alert: HTML = switch error {
        case .notChecked?: "<p class=\"error\" role=\"alert\" id=\"erreur\">Cochez la case pour accepter les conditions.</p>"
        case .versionChanged?: "<p class=\"error\" role=\"alert\" id=\"erreur\">Les conditions ont changé depuis l’affichage de la page : lisez cette nouvelle version, puis acceptez-la.</p>"
        case nil: ""
        }
        return layout("Conditions générales d’utilisation", """
            <div class="cgu" id="texte-cgu" tabindex="0" role="region" aria-label="Texte des conditions générales d’utilisation">\(paragraphs)</div>
            <p class="hint" id="version-cgu">Version \(version) des conditions.</p>
            \(alert)
            <form method="post" action="/connexion/cgu" id="form-cgu">
            \(csrfField(csrf))
            <input type="hidden" name="version" value="\(version)">
            <label><input type="checkbox" name="accepte" value="oui" id="accepte" required\(invalid(error != nil))> J’accepte les conditions générales d’utilisation.</label>
            <button type="submit">Continuer</button>
            </form>
            \(flowLimit(limits))
            \(signingIn(csrf: csrf, name: name))
            """, error: error != nil)
    }

    static func forgotPassword(csrf: String) -> HTML {
        layout("Mot de passe oublié", """
            <p>Indiquez l’adresse électronique de votre compte : vous recevrez un lien pour choisir un nouveau mot de passe.</p>
            <form method="post" action="/mot-de-passe-oublie" id="form-oubli">
            \(csrfField(csrf))
            <label for="email">Adresse électronique</label>
            <input id="email" name="email" type="email" autocomplete="username" required>
            <button type="submit">Recevoir le lien</button>
            </form>
            """)
    }

    static var forgotPasswordSent: HTML { layout("Vérifiez votre messagerie", """
        <p id="message">Si un compte correspond à cette adresse, un courriel contenant un lien de réinitialisation vient d’être envoyé. Le lien est valable 30 minutes et ne sert qu’une fois.</p>
        <p><a href="/connexion">Retour à la connexion</a></p>
        """) }

    /// The account's address is not shown, not even in a hidden `username` field for password
    /// managers (as Keycloak does): a link that leaked (a proxy's log of the URL, a forwarded
    /// mail) would then give the sign-in address with it, and for an account without a second
    /// factor yet, address and new password are the whole sign-in.
    static func resetPassword(csrf: String, token: String, errors: [String]) -> HTML {
        let invalid = !errors.isEmpty
        return layout("Choisir un mot de passe", """
            \(errorList(errors))
            \(passwordRules)
            <form method="post" action="/reinitialisation" id="form-reinitialisation">
            \(csrfField(csrf))
            <input type="hidden" name="jeton" value="\(token)">
            <label for="password">Nouveau mot de passe</label>
            <input id="password" name="password" type="password" autocomplete="new-password" minlength="\(PasswordPolicy.minimumLength)" required aria-describedby="\(invalid ? "erreur regles-mdp" : "regles-mdp")"\(invalid ? " aria-invalid=\"true\" autofocus" as HTML : "")>
            <label for="confirmation">Confirmation du mot de passe</label>
            <input id="confirmation" name="confirmation" type="password" autocomplete="new-password" required>
            <button type="submit">Enregistrer</button>
            </form>
            """, error: invalid)
    }

    /// « Changer mon mot de passe », from « Mon compte »: the current password, then the new
    /// one twice, under the same rules as a reset.
    static func changePassword(csrf: String, errors: [String]) -> HTML {
        let invalid = !errors.isEmpty
        return layout("Changer mon mot de passe", """
            \(errorList(errors))
            \(passwordRules)
            <form method="post" action="/compte/mot-de-passe" id="form-mot-de-passe">
            \(csrfField(csrf))
            <label for="actuel">Mot de passe actuel</label>
            <input id="actuel" name="actuel" type="password" autocomplete="current-password" required\(invalid ? " aria-invalid=\"true\" aria-describedby=\"erreur\" autofocus" as HTML : "")>
            <label for="password">Nouveau mot de passe</label>
            <input id="password" name="password" type="password" autocomplete="new-password" minlength="\(PasswordPolicy.minimumLength)" required aria-describedby="regles-mdp">
            <label for="confirmation">Confirmation du nouveau mot de passe</label>
            <input id="confirmation" name="confirmation" type="password" autocomplete="new-password" required>
            <button type="submit">Changer le mot de passe</button>
            </form>
            <p class="hint">Vos autres sessions seront fermées ; celle-ci reste ouverte. Un courriel vous confirmera le changement.</p>
            <p class="hint">Mot de passe actuel oublié ? <a href="/mot-de-passe-oublie">Mot de passe oublié</a> : un lien vous est envoyé, et le mot de passe choisi par ce lien ferme toutes vos sessions, celle-ci comprise.</p>
            <p><a href="/compte" id="lien-compte">Retour à « Mon compte »</a></p>
            """, error: invalid)
    }

    /// A form's errors as the pages announce them (`#erreur`, read out at once); nothing when
    /// there are none.
    static func errorList(_ errors: [String]) -> HTML {
        errors.isEmpty ? "" : "<ul class=\"error\" role=\"alert\" id=\"erreur\">\(errors.map { "<li>\($0)</li>" as HTML })</ul>"
    }

    /// The rules of a new password, as the reset and the change show them.
    static var passwordRules: HTML {
        "<p id=\"regles-mdp\">Au moins \(PasswordPolicy.minimumLength) caractères. Évitez les mots de passe courants, votre adresse électronique, les suites de touches ou de caractères (« azertyuiop », « aaaa… »). Une phrase de plusieurs mots convient très bien.</p>"
    }

    static var resetDone: HTML { layout("Mot de passe enregistré", """
        <p id="message">Votre mot de passe est enregistré. Par sécurité, toutes vos sessions ont été fermées : connectez-vous à nouveau.</p>
        <p>Si vous venez de la plateforme SAS, revenez-y et cliquez à nouveau sur le créneau pour ouvrir une session avec l’habilitation régulateur.</p>
        <p><a href="/connexion" id="lien-connexion">Se connecter</a></p>
        """) }

    static var resetInvalid: HTML { layout("Lien invalide", """
        <p id="message">Ce lien de réinitialisation est invalide, expiré ou déjà utilisé. Demandez-en un nouveau.</p>
        <p><a href="/mot-de-passe-oublie">Demander un nouveau lien</a></p>
        """) }

    /// The open sessions on « Mon compte »: this one first, marked, then the others, each with
    /// where it came from, how it was opened, its browser and address, and when; the button
    /// that ends the others when there are some.
    static func openSessions(_ sessions: [OpenSession], csrf: String) -> HTML {
        guard !sessions.isEmpty else { return "" }
        let items: [HTML] = sessions.map { session in
            let label: HTML = session.isCurrent ? "<strong>Cette session</strong>" : "Autre session"
            let origin = session.origin == .sas ? "ouverte depuis la plateforme SAS" : "ouverte directement, hors plateforme SAS"
            let means = session.authentication == .psc ? "avec Pro Santé Connect" : "avec mot de passe et code"
            let address = session.address.map { ", adresse de connexion \($0)" } ?? ""
            // Each other session can be closed on its own (Keycloak's account console and
            // ORY Kratos offer it): the form names it by its reference.
            let closeThis: HTML = session.isCurrent ? "" : """
                <form method="post" action="/compte/sessions/fermer" class="fermer-une">\(csrfField(csrf))<input type="hidden" name="session" value="\(session.reference)"><button type="submit" class="secondaire" aria-describedby="session-\(session.reference)">Fermer cette autre session</button></form>
                """
            return """
                <li id="session-\(session.reference)" data-courante="\(session.isCurrent ? "oui" : "non")">\(label), \(origin), \(means).<br>\(BrowserDescription.french(session.userAgent))\(address).<br><small>Ouverte le \(dateAndTime(session.createdAt)), dernière activité le \(dateAndTime(session.lastSeenAt)).</small>\(closeThis)</li>
                """
        }
        let others = sessions.filter { !$0.isCurrent }
        let close: HTML
        if others.isEmpty {
            close = ""
        } else {
            // The list stops at ``SessionStore/openSessionsShown``; the button closes them all.
            let label = others.count >= SessionStore.openSessionsShown - 1 ? "Fermer toutes mes autres sessions"
                : others.count == 1 ? "Fermer mon autre session" : "Fermer mes \(others.count) autres sessions"
            // The provider's own session outlives ours in that browser: what it can and
            // cannot do there once ours is closed, said where it applies
            // (``SessionStore/endedRemotely(_:accountID:in:)``).
            let provider: HTML = others.contains { $0.authentication == .psc }
                ? "<p class=\"hint\" id=\"avertissement-psc\">Une session ouverte avec Pro Santé Connect et fermée ici ne pourra se rouvrir dans son navigateur qu’après une nouvelle identification à Pro Santé Connect.</p>"
                : ""
            close = """
                <form method="post" action="/compte/sessions/fermer-autres" id="form-fermer-autres">
                \(csrfField(csrf))
                <button type="submit" class="secondaire">\(label)</button>
                </form>
                \(provider)
                <p class="hint">Une session que vous ne reconnaissez pas ? Fermez vos autres sessions, puis <a href="/compte/mot-de-passe">changez votre mot de passe</a>.</p>
                """
        }
        return """
            <h2>Sessions ouvertes</h2>
            <ul id="sessions" class="sessions">\(items)</ul>
            <p class="hint">Heures de Paris.</p>
            \(close)
            """
    }

    /// « 07/12/2026 à 22:04 », Paris time.
    static func dateAndTime(_ date: Date) -> String {
        date.formatted(Date.VerbatimFormatStyle(format: "\(day: .twoDigits)/\(month: .twoDigits)/\(year: .defaultDigits) à \(hour: .twoDigits(clock: .twentyFourHour, hourCycle: .zeroBased)):\(minute: .twoDigits)",
                                                 timeZone: TimeZone(identifier: "Europe/Paris") ?? .gmt, calendar: Calendar(identifier: .gregorian)))
    }

    static func account(csrf: String, name: String, email: String, check: HabilitationCheck, limits: Limits = Limits(),
                        sessions: [OpenSession] = [], notice: String? = nil) -> HTML {
        let banner: HTML = notice.map { "<p class=\"info\" role=\"status\" id=\"message\">\($0)</p>" } ?? ""
        let origin = check.session?.origin == .sas ? "Plateforme SAS" : "Connexion directe"
        let habilitation: HTML
        if check.decision.isGranted {
            habilitation = "<p class=\"ok\" id=\"habilitation\" data-habilitation=\"oui\">Habilitation régulateur : <strong>active</strong> pour cette session.</p>"
        } else {
            let reasons = reasonsInFrench(check)
            habilitation = "<p class=\"warning\" id=\"habilitation\" data-habilitation=\"non\">Habilitation régulateur : <strong>non active</strong> pour cette session.</p><ul id=\"raisons\">\(reasons.map { "<li>\($0)</li>" as HTML })</ul>"
        }
        return layout("Mon compte", """
            \(banner)
            <dl>
            <dt>Nom</dt><dd id="nom">\(name)</dd>
            <dt>Adresse électronique</dt><dd id="email">\(email)</dd>
            <dt>Origine de la session</dt><dd id="origine" data-origine="\(check.session?.origin.rawValue ?? "")">\(origin)</dd>
            </dl>
            \(habilitation)
            <p class="hint" id="duree-session">Votre session se ferme après \(limits.idleMinutes) minutes d’inactivité, et au plus tard \(limits.absoluteHours) heures après la connexion.</p>
            \(openSessions(sessions, csrf: csrf))
            <p><a href="/compte/mot-de-passe" id="lien-mot-de-passe">Changer mon mot de passe</a></p>
            <form method="post" action="/deconnexion" id="form-deconnexion">
            \(csrfField(csrf))
            <button type="submit">Se déconnecter</button>
            </form>
            """)
    }

    static func reasonsInFrench(_ check: HabilitationCheck) -> [String] {
        guard case .denied(let reasons) = check.decision else { return [] }
        return reasons.map { reason in
            switch reason {
            case .noLiveSession: return "La session a expiré."
            case .directSession: return "Cette session n’a pas été ouverte depuis la plateforme SAS : revenez-y et cliquez sur le créneau."
            case .deactivatedBySAS: return "La plateforme SAS a retiré votre habilitation."
            case .suspendedByVendor: return "L’éditeur a suspendu votre habilitation."
            case .requiredActionPending:
                return check.pendingActions == [.acceptCGU]
                    ? "Les conditions d’utilisation en vigueur n’ont pas encore été acceptées."
                    : "Une étape de première connexion reste à terminer."
            }
        }
    }

    /// A sign-in through Pro Santé Connect that did not open a session: why, and the two ways
    /// on (try the provider again, or sign in with e-mail, password and code).
    static func providerRefused(_ title: String, _ message: String, retry: Bool, click: String) -> HTML {
        layout(title, """
            <p id="message" role="alert">\(message)</p>
            \(retry ? "<p><a href=\"/connexion/psc?clic=\(click)\" id=\"lien-psc\">Réessayer avec Pro Santé Connect</a></p>" as HTML : "")
            <p><a href="/connexion/sans-psc?clic=\(click)" id="lien-sans-psc">Se connecter sans Pro Santé Connect</a></p>
            """)
    }

    static var signedOut: HTML { layout("Déconnexion", """
        <p id="message" role="status">Vous êtes déconnecté(e) de l’espace régulateur et de Pro Santé Connect.</p>
        <p><a href="/connexion" id="lien">Se reconnecter</a></p>
        """) }

    /// After a sign-out whose Pro Santé Connect session could not be ended from here (the
    /// provider unreachable since this server started, or offering no logout endpoint): on a
    /// shared workstation the next person following a SAS link would otherwise be signed in
    /// silently as this regulator, so say so, and what to do.
    static var signedOutProviderStillOpen: HTML { layout("Déconnexion", """
        <p id="message" role="status">Vous êtes déconnecté(e) de l’espace régulateur.</p>
        <p id="psc-ouverte" role="alert">Votre session Pro Santé Connect n’a pas pu être fermée : elle peut rester ouverte dans ce navigateur. Sur un poste partagé, fermez toutes les fenêtres du navigateur avant de le laisser à quelqu’un d’autre.</p>
        <p><a href="/connexion" id="lien">Se reconnecter</a></p>
        """) }

    static func error(_ title: String, _ message: String, link: (href: String, text: String) = ("/connexion", "Retour à la connexion")) -> HTML {
        layout(title, "<p id=\"message\">\(message)</p><p><a href=\"\(link.href)\" id=\"lien\">\(link.text)</a></p>")
    }

    /// Where the vendor's proxy sends a browser the forward-auth refused (403): why, in
    /// words, and what to do next.
    static func accessRefused(csrf: String, check: HabilitationCheck) -> HTML {
        guard check.session != nil else {
            return layout("Accès refusé", """
                <p id="message">Vous n’êtes pas connecté(e), ou votre session a expiré.</p>
                <p><a href="/connexion" id="lien">Se connecter</a></p>
                """)
        }
        if check.decision.isGranted {
            return layout("Accès autorisé", "<p class=\"ok\" id=\"message\" data-habilitation=\"oui\">Votre session dispose de l’habilitation régulateur. Revenez à l’agenda.</p>")
        }
        let direct = check.session?.origin == .direct
        // Only when the step is all that is missing: a withdrawal or a suspension is not
        // lifted by signing in again.
        let stepOwed: Bool = if case .denied(let reasons) = check.decision { reasons == [.requiredActionPending] } else { false }
        let advice: HTML = direct
            ? "<p id=\"conseil\">Pour utiliser les fonctions régulateur, déconnectez-vous puis revenez dans l’agenda depuis la plateforme SAS : la session ouverte depuis la plateforme SAS disposera de l’habilitation.</p>"
            : stepOwed
            // The SAS link leads a session that owes a step through a sign-in to it.
            ? "<p id=\"conseil\">Revenez dans l’agenda depuis la plateforme SAS : la connexion vous mènera à l’étape restante.</p>"
            : "<p id=\"conseil\">Si vous pensez qu’il s’agit d’une erreur, contactez le support de votre éditeur ou la plateforme SAS.</p>"
        return layout("Accès refusé", """
            <p class="warning" id="message" data-habilitation="non">Cette session ne dispose pas de l’habilitation régulateur.</p>
            <ul id="raisons">\(reasonsInFrench(check).map { "<li>\($0)</li>" as HTML })</ul>
            \(advice)
            <form method="post" action="/deconnexion" id="form-deconnexion">
            \(csrfField(csrf))
            <button type="submit">Se déconnecter</button>
            </form>
            <p><a href="/compte" id="lien-compte">Mon compte</a></p>
            """)
    }

    /// The pages' only script, inline and allowed by its hash alone (`script-src 'sha256-…'`,
    /// ``WebController/securityHeaders``; not `'self'`, which would allow any script the
    /// agenda serves on a shared origin): a form is sent once.
    /// A double click on a button sends its form twice, the browser abandons the first
    /// answer and shows the second, in which the sign-in has already moved on (« connexion
    /// expirée » after a code or the CGU; the recovery codes of an enrolment lost). Keycloak's
    /// sign-in pages do the same. The guard lifts after 15 s (a lost answer can be sent again)
    /// and when the page is shown again from the back-forward cache. Without the script the
    /// pages work as before; the server copes with a second post (`EnrolmentOutcome.reissued`).
    static let formScript = """
        "use strict";
        document.addEventListener("submit", function (event) {
          var form = event.target;
          if (form.dataset.envoye === "oui") { event.preventDefault(); return; }
          form.dataset.envoye = "oui";
          form.setAttribute("aria-busy", "true");
          setTimeout(function () { delete form.dataset.envoye; form.removeAttribute("aria-busy"); }, 15000);
        });
        window.addEventListener("pageshow", function () {
          document.querySelectorAll("form[data-envoye]").forEach(function (form) {
            delete form.dataset.envoye;
            form.removeAttribute("aria-busy");
          });
        });

        """

    static let stylesheet = """
        body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f5f5fe;color:#161616}
        main{max-width:34rem;margin:3rem auto;padding:2rem;background:#fff;border-radius:8px;box-shadow:0 1px 4px rgba(0,0,0,.12)}
        h1{font-size:1.5rem;color:#000091}
        label{display:block;margin-top:1rem;font-weight:600}
        input[type=email],input[type=password],input[inputmode]{width:100%;box-sizing:border-box;padding:.6rem;font-size:1rem;border:1px solid #929292;border-radius:4px}
        button{margin-top:1.2rem;padding:.7rem 1.2rem;font-size:1rem;background:#000091;color:#fff;border:2px solid transparent;border-radius:4px;cursor:pointer}
        button.secondaire{background:#fff;color:#000091;border-color:#000091}
        :focus-visible{outline:3px solid #000091;outline-offset:2px}
        dd,code,.error,.info,.hint,.sessions li{overflow-wrap:anywhere}.sessions{padding-left:1.2rem}.sessions li{margin-bottom:.6rem}
        @media (max-width:30rem){main{margin:0;padding:1rem;border-radius:0;box-shadow:none}}
        .error{color:#ce0500}.info{color:#0063cb}.ok{color:#18753c}.warning{color:#b34000}.hint{color:#666;font-size:.9rem}
        .qr svg{max-width:100%;height:auto}.cgu{max-height:20rem;overflow:auto;border:1px solid #ddd;padding:0 1rem}
        code{font-size:1.1rem;letter-spacing:.05em}
        main:has(table){max-width:72rem}table{border-collapse:collapse;width:100%;margin-top:1.5rem}
        th,td{border-bottom:1px solid #ddd;padding:.5rem;text-align:left;vertical-align:top}
        .danger{background:#ce0500}.action input{padding:.4rem;width:12rem}.action button{margin-top:.4rem}
        .effacement{margin-top:1rem;border-top:1px solid #ddd;padding-top:.5rem}.effacement label{font-weight:400;font-size:.9rem}
        .sr{position:absolute;left:-9999px}
        footer{max-width:34rem;margin:0 auto 2rem;padding:0 2rem}.pied{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.5rem 1.5rem;font-size:.9rem}
        .pied a{color:#3a3a3a}@media (max-width:30rem){footer{padding:0 1rem}}
        .bouton-psc{display:inline-block;margin-top:1rem;padding:.7rem 1.2rem;background:#000091;color:#fff;border:2px solid transparent;border-radius:4px;text-decoration:none;font-weight:600}
        """
}
