import Crypto
import Foundation
import Logging
import Synchronization
import X509

/// The revocation lists in force, replaced atomically on reload. A reload that fails keeps the
/// previous lists (and says so in the log): a broken file must not open the door, and must
/// not close it on every valid caller either.
final class CRLStore: Sendable {
    /// A CA as a CRL's signer: its name and its key. Two CAs of one name (a renewal with a
    /// new key, both trusted during the changeover) each have their own list; looked up by
    /// name alone, one list would stand for both and the other's revocations be ignored.
    struct Authority: Hashable, Sendable, CustomStringConvertible {
        var name: DistinguishedName
        var key: Certificate.PublicKey

        init(_ certificate: Certificate) {
            name = certificate.subject
            key = certificate.publicKey
        }

        init(_ list: CertificateRevocationList) {
            name = list.issuer
            key = list.signer
        }

        var description: String { "\(name)" }

        /// The start of the key's SHA-256, to tell apart CAs of the same name.
        var keyID: String {
            SHA256.hash(data: Array(key.subjectPublicKeyInfoBytes)).prefix(8).map { String(format: "%02x", $0) }.joined()
        }
    }

    struct Snapshot: Sendable {
        var lists: [Authority: CertificateRevocationList] = [:]
        var fingerprints: [String: FileFingerprint] = [:]
        var loadedAt: Date?
        var lastError: String?
        /// CRLs of issuers outside the bundle, skipped at the last load (``CertificateRevocationList/UnknownIssuer``).
        var skipped: [String] = []
        /// Bumped each time new lists come into force: a check made under an older
        /// generation must be made again.
        var generation = 0
    }

    /// What identifies a version of a file without reading it.
    struct FileFingerprint: Sendable, Equatable {
        var size: Int64
        var modified: TimeInterval
        var inode: UInt64
    }

    /// The result of a revocation lookup for one certificate.
    enum Status: Equatable {
        case good
        case noCRL
        case revoked(source: String)
        case expired(nextUpdate: Date, source: String)
    }

    let paths: [String]
    /// The documented opt-out (`--allow-missing-crl`): certificates whose issuer has no CRL
    /// are accepted unchecked instead of refused. Logged at start and shown by `/readyz`.
    let allowMissing: Bool
    /// The CAs whose CRLs are read, and a count of their replacements.
    private let issuers: Mutex<(certificates: [Certificate], generation: Int)>
    /// ``issuingAuthorities(of:)``'s answers, and the issuers' generation they were found
    /// under (an answer found among replaced issuers is not kept).
    private let issuedBy = Mutex<(generation: Int, answers: [Certificate: [Authority]])>((0, [:]))
    private let state = Mutex(Snapshot())
    private let logger: Logger

    /// Loads every file now; a failure here stops the server from starting.
    init(paths: [String], issuers: [Certificate], allowMissing: Bool = false, logger: Logger) throws {
        self.paths = paths
        self.allowMissing = allowMissing
        self.issuers = Mutex((issuers, 0))
        self.logger = logger
        let snapshot = try Self.loadAll(paths: paths, issuers: issuers)
        state.withLock { $0 = snapshot }
        logSkipped(snapshot)
    }

    /// One warning per CRL of an issuer outside the bundle (``CertificateRevocationList/UnknownIssuer``).
    private func logSkipped(_ snapshot: Snapshot) {
        for skipped in snapshot.skipped {
            logger.warning("client CRL skipped: its issuer is not in the client CA bundle", metadata: ["crl": "\(skipped)"])
        }
    }

    var snapshot: Snapshot { state.withLock { $0 } }

    static func fingerprint(_ path: String) -> FileFingerprint? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        let modified = TimeInterval(info.st_mtim.tv_sec) + TimeInterval(info.st_mtim.tv_nsec) / 1e9
        return FileFingerprint(size: Int64(info.st_size), modified: modified, inode: UInt64(info.st_ino))
    }

    private static func loadAll(paths: [String], issuers: [Certificate]) throws -> Snapshot {
        var snapshot = Snapshot()
        for path in paths {
            snapshot.fingerprints[path] = fingerprint(path)
            let loaded = try CertificateRevocationList.load(path: path, issuers: issuers)
            snapshot.skipped += loaded.skipped
            for list in loaded.lists {
                // Two lists from the same CA: keep the most recent.
                let authority = Authority(list)
                if let existing = snapshot.lists[authority], existing.thisUpdate > list.thisUpdate { continue }
                snapshot.lists[authority] = list
            }
        }
        snapshot.loadedAt = Date()
        return snapshot
    }

    /// Re-reads every file. Returns whether the new lists are in force.
    @discardableResult
    func reload(reason: String) -> Bool {
        do {
            var fresh = try Self.loadAll(paths: paths, issuers: issuers.withLock { $0.certificates })
            var keptNewer: [String] = []
            state.withLock {
                // A list older than the one in force (a stale mirror, a backup
                // copied back) would un-revoke what the newer one revoked: the newer one stays,
                // while it is in force (not past its nextUpdate) and not dated in the future (a
                // CA whose clock ran ahead, then was corrected, would otherwise block every
                // later list until a restart).
                let now = Date()
                for (issuer, current) in $0.lists where current.thisUpdate <= now.addingTimeInterval(300) && (current.nextUpdate ?? .distantFuture) > now {
                    if let candidate = fresh.lists[issuer], candidate.thisUpdate < current.thisUpdate {
                        fresh.lists[issuer] = current
                        keptNewer.append("\(issuer)")
                    }
                }
                fresh.generation = $0.generation + 1
                $0 = fresh
            }
            for issuer in keptNewer {
                logger.warning("client CRL older than the one in force; the newer one stays", metadata: ["issuer": "\(issuer)"])
            }
            logSkipped(fresh)
            let revoked = fresh.lists.values.reduce(0) { $0 + $1.revokedSerials.count }
            logger.notice("client CRLs reloaded", metadata: ["reason": "\(reason)", "lists": "\(fresh.lists.count)", "revoked": "\(revoked)"])
            return true
        } catch {
            // Remember the broken version, so polling does not retry (and log) until the
            // file changes again or SIGHUP asks.
            let fingerprints = Dictionary(uniqueKeysWithValues: paths.map { ($0, Self.fingerprint($0)) })
            state.withLock {
                $0.lastError = "\(error)"
                for (path, fingerprint) in fingerprints { $0.fingerprints[path] = fingerprint }
            }
            logger.error("client CRL reload failed; the previous lists stay in force", metadata: ["reason": "\(reason)", "error": "\(error)"])
            return false
        }
    }

    /// The CAs whose signatures CRLs must bear, after a client CA rotation (the caller
    /// reloads next).
    func replaceIssuers(_ certificates: [Certificate]) {
        issuers.withLock { $0 = (certificates, $0.generation + 1) }
    }

    /// Reloads when a file's size, mtime or inode changed (edit in place or atomic rename).
    func reloadIfChanged() {
        let known = state.withLock { $0.fingerprints }
        let changed = paths.contains { Self.fingerprint($0) != known[$0] }
        if changed { reload(reason: "file changed") }
    }

    /// The client CAs (certificates of the bundle that may issue certificates) no loaded CRL
    /// covers: a certificate they issued could be revoked without our knowing.
    var uncoveredAuthorities: [Certificate] {
        let (authorities, lists) = (issuers.withLock { $0.certificates }, state.withLock { $0.lists })
        return authorities.filter { authority in
            // A certificate without basic constraints (an X.509 v1 root), or with unreadable
            // ones, counts as a CA: demanding a CRL is the safe side.
            let isCA: Bool = switch try? authority.extensions.basicConstraints {
            case .notCertificateAuthority?: false
            default: true
            }
            return isCA && lists[Authority(authority)] == nil
        }
    }

    /// The CAs of the bundle that issued `certificate`: its issuer's name, and a key its
    /// signature verifies with. For the last certificate of a path, whose issuer the path does
    /// not hold (an intermediate placed in the bundle).
    func issuingAuthorities(of certificate: Certificate) -> [Authority] {
        let (among, generation) = issuers.withLock { $0 }
        if let known = issuedBy.withLock({ $0.generation == generation ? $0.answers[certificate] : nil }) { return known }
        let found = among
            .filter { $0.subject == certificate.issuer && $0.publicKey.isValidSignature(certificate.signature, for: certificate) }
            .map(Authority.init)
        // Remembered: an anchor of the bundle that is not self-issued (an intermediate) is
        // looked up on every INT_R02 request, and a signature check costs more than the rest
        // of the revalidation. The certificates asked about are the bundle's, so few.
        issuedBy.withLock { cache in
            if cache.generation != generation || cache.answers.count >= 64 { cache = (generation, [:]) }
            cache.answers[certificate] = found
        }
        return found
    }

    /// The CAs that issued each certificate of a validated path: the next certificate of the
    /// path (the path's validation checked its signature), else the bundle's.
    private func authorities(along path: [Certificate]) -> [[Authority]] {
        path.indices.map { index in
            if index + 1 < path.count { return [Authority(path[index + 1])] }
            // A self-issued anchor is not checked (its own list vouches for what it issued).
            return path[index].issuer == path[index].subject && path.count > 1 ? [] : issuingAuthorities(of: path[index])
        }
    }

    /// Why a validated path (leaf to trust anchor) cannot be accepted as far as revocation
    /// goes, or nil. Every certificate but the anchor needs its issuer's CRL (fail closed
    /// unless ``allowMissing``); an anchor that is not self-issued (an intermediate placed in
    /// the CA bundle) is checked too when its issuer's CRL is loaded.
    func revocationProblem(path: [Certificate], now: Date) -> String? {
        let issuedBy = authorities(along: path)
        for (index, certificate) in path.enumerated() {
            let isAnchor = index == path.count - 1 && path.count > 1
            if isAnchor && certificate.issuer == certificate.subject { break }
            switch status(of: certificate, issuedBy: issuedBy[index], now: now) {
            case .good:
                continue
            case .noCRL:
                // Fail closed: a certificate whose issuer has no CRL loaded could be revoked
                // and we would not know. Only the documented opt-out lets it through.
                if allowMissing || isAnchor { continue }
                return "no CRL is loaded for \(certificate.issuer), so revocation cannot be checked (--client-crl, or --allow-missing-crl)"
            case .revoked(let source):
                return "certificate \(ClientIdentity.serialHex(certificate.serialNumber)) is revoked (CRL \(source))"
            case .expired(let nextUpdate, let source):
                return "the CRL of \(certificate.issuer) expired at \(nextUpdate) (\(source)); refusing until a fresh CRL is loaded"
            }
        }
        return nil
    }

    /// The lists' generation (see ``Snapshot/generation``).
    var generation: Int { state.withLock { $0.generation } }

    /// The earliest `nextUpdate` of the lists that vouch for this path: a check that passed
    /// stands at most until then.
    func earliestNextUpdate(path: [Certificate]) -> Date? {
        let issuedBy = authorities(along: path)
        return state.withLock { state in
            issuedBy.flatMap { $0.compactMap { state.lists[$0]?.nextUpdate } }.min()
        }
    }

    /// The status of a certificate whose issuing CA the bundle tells (``issuingAuthorities(of:)``).
    func status(of certificate: Certificate, now: Date) -> Status {
        status(of: certificate, issuedBy: issuingAuthorities(of: certificate), now: now)
    }

    /// The status of `certificate` by the lists of the CAs that may have issued it: revoked
    /// or expired by any of them (two same-name CAs with the same key are one CA), good by one
    /// that is in force, no CRL when none is loaded.
    func status(of certificate: Certificate, issuedBy authorities: [Authority], now: Date) -> Status {
        let lists = state.withLock { state in authorities.compactMap { state.lists[$0] } }
        guard !lists.isEmpty else { return .noCRL }
        let serial = CertificateRevocationList.normalizedSerial(certificate.serialNumber)
        for list in lists {
            if let nextUpdate = list.nextUpdate, nextUpdate < now {
                return .expired(nextUpdate: nextUpdate, source: list.source)
            }
            if list.revokedSerials.contains(serial) {
                return .revoked(source: list.source)
            }
        }
        return .good
    }
}
