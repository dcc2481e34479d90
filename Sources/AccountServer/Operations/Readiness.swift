import Accounts
import Foundation
import OpenIDConnect
import X509

/// `/readyz`: can this instance serve correctly right now? The database answers a query,
/// the server certificates are within their validity, and every CRL is loaded and not past
/// its `nextUpdate` (a stale CRL makes the mTLS listener refuse every client, fail closed).
struct ReadinessProbe: Sendable {
    struct Check: Sendable {
        var name: String
        var ok: Bool
        var detail: String
    }

    let database: AccountDatabase
    let crlStore: CRLStore
    /// The certificates this instance presents now (FHIR and web listeners; SIGHUP may
    /// replace them).
    let serverCertificates: @Sendable () -> [TLSMaterial.PresentedCertificate]
    let clock: @Sendable () -> Date
    /// The OpenID Connect provider, when sign-in through it is configured.
    let provider: RelyingParty?

    init(database: AccountDatabase, crlStore: CRLStore, serverCertificates: @escaping @Sendable () -> [TLSMaterial.PresentedCertificate],
         provider: RelyingParty? = nil, clock: @escaping @Sendable () -> Date = Date.init) {
        self.provider = provider
        self.database = database
        self.crlStore = crlStore
        self.serverCertificates = serverCertificates
        self.clock = clock
    }

    func run() async -> [Check] {
        var checks: [Check] = []
        do {
            try await database.ping()
            checks.append(Check(name: "database", ok: true, detail: "reachable"))
        } catch {
            checks.append(Check(name: "database", ok: false, detail: "query failed"))
        }
        let now = clock()
        for presented in serverCertificates() {
            let name = presented.name, certificate = presented.certificate
            let ok = certificate.notValidBefore <= now && now < certificate.notValidAfter
            checks.append(Check(name: "certificate:\(name)", ok: ok, detail: "valid until \(AuditLog.timestamp(certificate.notValidAfter))"))
        }
        let snapshot = crlStore.snapshot
        // Two CAs of one name (a renewal with a new key) are told apart by their key.
        let uncoveredAuthorities = crlStore.uncoveredAuthorities.map(CRLStore.Authority.init)
        let sharedNames = Set(Dictionary(grouping: uncoveredAuthorities + snapshot.lists.keys, by: \.name).filter { Set($0.value).count > 1 }.keys)
        func shown(_ authority: CRLStore.Authority) -> String {
            sharedNames.contains(authority.name) ? "\(authority.name) (key \(authority.keyID))" : "\(authority.name)"
        }
        let uncovered = uncoveredAuthorities.map(shown)
        if !uncovered.isEmpty {
            // Without the opt-out this means a CA rotation brought in a CA without its CRL:
            // its callers are refused (fail closed), so the instance is not ready.
            checks.append(Check(name: "crl-coverage", ok: crlStore.allowMissing,
                                detail: (crlStore.allowMissing ? "revocation NOT checked (--allow-missing-crl) for: " : "no CRL for: ")
                                    + uncovered.joined(separator: "; ")))
        }
        if !crlStore.paths.isEmpty {
            if snapshot.lists.isEmpty {
                checks.append(Check(name: "crl", ok: false, detail: snapshot.lastError ?? "no CRL loaded"))
            }
            for (issuer, list) in snapshot.lists.map({ (shown($0.key), $0.value) }).sorted(by: { $0.0 < $1.0 }) {
                let fresh = list.nextUpdate.map { now < $0 } ?? true
                checks.append(Check(name: "crl:\(issuer)", ok: fresh,
                                    detail: list.nextUpdate.map { (fresh ? "next update " : "expired at ") + AuditLog.timestamp($0) } ?? "no nextUpdate"))
            }
            if let error = snapshot.lastError {
                checks.append(Check(name: "crl-reload", ok: true, detail: "last reload failed, previous lists kept: \(error)"))
            }
        }
        if let provider {
            // Informational: without the provider, password sign-in still serves, so this
            // instance stays in rotation (every instance would fail the check at once).
            do {
                _ = try await provider.providerMetadata()
                checks.append(Check(name: "oidc-provider", ok: true, detail: "metadata and keys loaded"))
            } catch {
                checks.append(Check(name: "oidc-provider", ok: true, detail: "unreachable, sign-in through it fails until it answers: \(error)"))
            }
        }
        return checks
    }

    static func json(_ checks: [Check]) -> JSONValue {
        .object([
            "status": .string(checks.allSatisfy(\.ok) ? "ready" : "not-ready"),
            "checks": .array(checks.map { .object(["name": .string($0.name), "ok": .bool($0.ok), "detail": .string($0.detail)]) }),
        ])
    }
}
