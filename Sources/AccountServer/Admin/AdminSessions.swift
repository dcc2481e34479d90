import Accounts
import Foundation
import Synchronization

/// Sessions of the admin page. The admin types the admin token once into the sign-in form;
/// the browser then holds a random session id in an `HttpOnly; SameSite=Strict` cookie, and
/// every form carries a CSRF token bound to that session (the regulator pages' mechanism);
/// the page itself (a GET) also wants that token, in its address, so the cookie alone is
/// not a session (see `AdminController.pageSession`).
/// Nothing the browser caches or sends by itself (HTTP Basic credentials used to be) can
/// authorise a request another site makes through it.
///
/// Kept in memory: an admin signs in again after a restart. Only SHA-256 of ids is kept.
final class AdminSessions: Sendable {
    typealias Clock = MonotonicClock

    private struct Entry { var created: ContinuousClock.Instant; var lastSeen: ContinuousClock.Instant; var identity: AdminIdentity }
    private let entries = Mutex<[String: Entry]>([:])
    let idleTimeout: Duration
    let absoluteTimeout: Duration
    private let clock: Clock

    /// Cookie names: `__Host-` (bound to this exact host and port-less path `/`) when the
    /// listener is served over TLS, where browsers accept that prefix.
    static func cookie(secure: Bool) -> String { secure ? "__Host-as-admin-session" : "as-admin-session" }
    static func csrfCookie(secure: Bool) -> String { secure ? "__Host-as-admin-csrf" : "as-admin-csrf" }

    init(idleTimeout: Duration = .seconds(30 * 60), absoluteTimeout: Duration = .seconds(8 * 3600), clock: Clock = .continuous) {
        self.idleTimeout = idleTimeout
        self.absoluteTimeout = absoluteTimeout
        self.clock = clock
    }

    /// A new session of `identity` (who signed in, with which token); returns its id (for
    /// the cookie).
    func open(_ identity: AdminIdentity) -> String {
        let token = SecretToken.generate()
        let now = clock.now()
        entries.withLock { entries in
            entries = entries.filter { isLive($0.value, at: now) }
            entries[SecretToken.hash(token)] = Entry(created: now, lastSeen: now, identity: identity)
        }
        return token
    }

    /// Who the live session `token` names belongs to, if it is live; activity extends the
    /// idle timeout. The caller checks that identity still holds (``AdminKeyring/current(_:)``,
    /// outside this lock: it may read a file) and closes the session when it does not.
    func validate(_ token: String?) -> AdminIdentity? {
        guard let token else { return nil }
        let now = clock.now()
        let hash = SecretToken.hash(token)
        return entries.withLock { entries in
            guard var entry = entries[hash], isLive(entry, at: now) else {
                entries[hash] = nil
                return nil
            }
            entry.lastSeen = now
            entries[hash] = entry
            return entry.identity
        }
    }

    /// Whether `token` names a live session, without extending it (for the logs).
    func isLive(_ token: String) -> Bool {
        let now = clock.now()
        return entries.withLock { entries in entries[SecretToken.hash(token)].map { isLive($0, at: now) } ?? false }
    }

    func close(_ token: String?) {
        guard let token else { return }
        _ = entries.withLock { $0.removeValue(forKey: SecretToken.hash(token)) }
    }

    private func isLive(_ entry: Entry, at now: ContinuousClock.Instant) -> Bool {
        now - entry.lastSeen < idleTimeout && now - entry.created < absoluteTimeout
    }

    /// `Set-Cookie` for the admin listener: `Secure` when it is served over TLS. Over plain
    /// HTTP on loopback, not: Chrome and Firefox keep a `Secure` cookie from
    /// `http://localhost`, Safari drops it, and the page would never sign in there. What the
    /// flag guards against, the cookie sent in clear over a network, cannot happen on loopback.
    static func setCookie(_ name: String, _ value: String, secure: Bool, clear: Bool = false) -> String {
        "\(name)=\(clear ? "" : value); Path=/; HttpOnly; SameSite=Strict" + (secure ? "; Secure" : "") + (clear ? "; Max-Age=0" : "")
    }
}
