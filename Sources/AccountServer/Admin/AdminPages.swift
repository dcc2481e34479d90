import Foundation
import Habilitation

/// The vendor admin's page, in French: find an account, withdraw or restore its regulator
/// habilitation in one click. No script but the regulators' pages' one (the same strict CSP).
enum AdminPages {
    static func message(code: String) -> String? {
        switch code {
        case "suspendu": return "Habilitation retirée : toutes les sessions du compte la perdent dès leur prochaine requête."
        case "deja-suspendu": return "L’habilitation de ce compte était déjà retirée."
        case "retabli": return "Habilitation rétablie (si la plateforme SAS n’a pas désactivé le compte)."
        case "deja-retabli": return "Ce compte n’était pas suspendu."
        case "efface": return "Compte effacé : le compte et ses données ont été supprimés ; le journal d’audit garde ses événements."
        case "efface-journal":
            return "Compte effacé : le compte et ses données ont été supprimés ; le journal d’audit garde ses événements. "
                + "Des copies antérieures restent dans le fichier -wal de la base (une sauvegarde ou une lecture en cours l’a retenu) : "
                + "lancez admin erase-deactivated plus tard, ou elles disparaîtront à l’arrêt propre du serveur."
        case "effacement-non-confirme": return "Effacement non confirmé : tapez EFFACER dans le champ prévu pour effacer le compte. Rien n’a été supprimé."
        case "effacement-refuse": return "Effacement refusé : la plateforme SAS a réactivé ce compte entre-temps. Rien n’a été supprimé."
        default: return nil
        }
    }

    static func status(_ account: AccountListing) -> HTML {
        var parts: [HTML] = []
        parts.append(account.active ? "<span class=\"ok\">actif (SAS)</span>" : "<span class=\"warning\">désactivé par le SAS</span>")
        if let suspension = account.suspension {
            let by = suspension.by.map { " par \($0)" } ?? ""
            parts.append("<span class=\"error\" data-suspendu=\"oui\">habilitation retirée\(by) le \(french(suspension.at))</span>")
        }
        if let locked = account.lockedUntil, locked > Date() {
            parts.append("<span class=\"warning\">bloqué jusqu’à \(french(locked))</span>")
        }
        return HTML(raw: parts.map(\.description).joined(separator: "<br>"))
    }

    static func french(_ date: Date) -> String {
        date.formatted(Date.VerbatimFormatStyle(format: "\(day: .twoDigits)/\(month: .twoDigits)/\(year: .defaultDigits) \(hour: .twoDigits(clock: .twentyFourHour, hourCycle: .zeroBased)):\(minute: .twoDigits)",
                                                 timeZone: TimeZone(identifier: "Europe/Paris") ?? .gmt, calendar: Calendar(identifier: .gregorian)))
    }

    /// The admin page's sign-in: the admin token, typed once (then a session cookie).
    static func signIn(csrf: String, error: Bool, sharedToken: Bool) -> HTML {
        let label: HTML = sharedToken ? "Votre jeton d’administration (ou celui du fichier --admin-token-file)" : "Votre jeton d’administration"
        let message: HTML = error ? "<p class=\"error\" id=\"erreur\" role=\"alert\">Jeton incorrect.</p>" : ""
        return Pages.layout("Administration des comptes régulateurs", """
            \(message)
            <form method="post" action="/connexion" id="form-connexion">
            <input type="hidden" name="csrf" value="\(csrf)">
            <label for="jeton">\(label)</label>
            <input id="jeton" name="jeton" type="password" autocomplete="off" required autofocus>
            <button type="submit">Se connecter</button>
            </form>
            """)
    }

    /// `mayManage`: the session's token may act (role `manage`); a `view` token's page lists
    /// the same accounts without a form (the server refuses the posts anyway).
    static func search(query: String, accounts: [AccountListing], csrf: String, notice: String?, mayManage: Bool = true) -> HTML {
        let rows: [HTML] = accounts.map { account in
            let identifiers = [account.nationalID.map { "IDNPS \($0)" }, account.sasTechnicalID.map { "id. SAS \($0)" }].compactMap { $0 }.joined(separator: ", ")
            let action: HTML = account.suspension == nil
                ? """
                  <form method="post" action="/comptes/\(account.accountID)/suspendre" class="action">
                  <input type="hidden" name="csrf" value="\(csrf)"><input type="hidden" name="q" value="\(query)">
                  <label class="sr" for="motif-\(account.accountID)">Motif</label>
                  <input id="motif-\(account.accountID)" name="motif" placeholder="Motif (facultatif)" maxlength="500">
                  <button type="submit" class="danger" id="retirer-\(account.accountID)">Retirer l’habilitation</button>
                  </form>
                  """
                : """
                  <form method="post" action="/comptes/\(account.accountID)/retablir" class="action">
                  <input type="hidden" name="csrf" value="\(csrf)"><input type="hidden" name="q" value="\(query)">
                  <button type="submit" id="retablir-\(account.accountID)">Rétablir l’habilitation</button>
                  \(account.liveSessions > 0 ? HTML(raw: "<small class=\"hint\">Les sessions encore ouvertes (\(account.liveSessions)) retrouveront l’habilitation : pour les fermer d’abord, <code>account-server admin revoke-sessions</code>.</small>") : HTML(raw: ""))
                  </form>
                  """
            // Erasure only for an account the SAS deactivated (``VendorAdministration/erase``),
            // confirmed by typing a word: no script on the page for a dialog, and one click
            // must not delete a person's account.
            let erase: HTML = account.active ? "" : """
                <form method="post" action="/comptes/\(account.accountID)/effacer" class="action effacement">
                <input type="hidden" name="csrf" value="\(csrf)"><input type="hidden" name="q" value="\(query)">
                <label for="confirmation-\(account.accountID)">Effacer définitivement ce compte et ses données (désactivé par le SAS) : tapez EFFACER</label>
                <input id="confirmation-\(account.accountID)" name="confirmation" autocomplete="off" required>
                <label class="sr" for="motif-effacement-\(account.accountID)">Motif de l’effacement</label>
                <input id="motif-effacement-\(account.accountID)" name="motif" placeholder="Motif (facultatif, sans donnée de santé)" maxlength="500">
                <button type="submit" class="danger" id="effacer-\(account.accountID)">Effacer le compte</button>
                </form>
                """
            let actions: HTML = mayManage ? "<td>\(action)\(erase)</td>" : ""
            return """
                <tr id="compte-\(account.accountID)">
                <td>\(account.givenName) \(account.familyName)<br><small>\(account.email)</small></td>
                <td><small>\(identifiers)</small></td>
                <td>\(status(account))</td>
                <td>\(account.liveSessions)</td>
                \(actions)
                </tr>
                """
        }
        let results: HTML
        if query.isEmpty {
            results = "<p class=\"hint\">Recherchez par nom, adresse e-mail, IDNPS ou identifiant technique SAS.</p>"
        } else if rows.isEmpty {
            results = "<p id=\"aucun\">Aucun compte ne correspond à « \(query) ».</p>"
        } else {
            results = """
                <table id="resultats">
                <thead><tr><th>Régulateur</th><th>Identifiants</th><th>État</th><th>Sessions ouvertes</th>\(mayManage ? HTML(raw: "<th>Action</th>") : HTML(raw: ""))</tr></thead>
                <tbody>\(rows)</tbody>
                </table>
                """
        }
        let banner: HTML = notice.map { "<p class=\"info\" role=\"status\" id=\"message\">\($0)</p>" } ?? ""
        let hint: HTML = "<p class=\"hint\">Retirer l’habilitation prend effet à la requête suivante de chaque session ouverte. Elle reste retirée même si la plateforme SAS réactive le compte, jusqu’à ce qu’un administrateur la rétablisse.</p>"
        let readOnly: HTML = mayManage ? "" : "<p class=\"warning\" id=\"lecture-seule\">Accès en lecture seule : votre jeton permet de consulter les comptes, pas de les modifier.</p>"
        return Pages.layout("Administration des comptes régulateurs", """
            \(banner)
            \(readOnly)
            <form method="get" action="/" id="form-recherche">
            <input type="hidden" name="csrf" value="\(csrf)">
            <label for="q">Rechercher un compte</label>
            <input id="q" name="q" value="\(query)" type="search" autofocus>
            <button type="submit">Rechercher</button>
            </form>
            \(results)
            <form method="post" action="/deconnexion" id="form-deconnexion"><input type="hidden" name="csrf" value="\(csrf)"><button type="submit">Se déconnecter</button></form>
            \(mayManage ? hint : HTML(raw: ""))
            """)
    }
}
