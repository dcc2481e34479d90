import Foundation
import Storage

/// Ties the server key file to the database it seals.
///
/// The key seals TOTP secrets and queued mails and keys the recovery codes' HMAC. A server
/// started with another key (a restore without the key file, a new working directory, a
/// second instance given its own file) used to create a new key and run: every enrolled
/// regulator's second factor then failed with an error page, and nothing said why. Now the
/// database keeps the key's fingerprint (`secret_key_check`, one row: an HMAC of a constant
/// under a key derived from it, which says nothing about the key), and start-up refuses a key
/// that is not the one the database was sealed with, or a missing key file for a database
/// that holds sealed data, with the reason. A key is created only for a database that nothing
/// was sealed in yet.
public enum SecretKeyCheck {
    /// Loads (or, for a database with nothing sealed yet, creates) the key at `path`, and
    /// checks it against the database's fingerprint, recording the fingerprint at first use.
    public static func loadKey(path: String, database: AccountDatabase) async throws -> [UInt8] {
        let state = try await database.read { db in
            (fingerprint: try String.fetchOne(db, sql: "SELECT fingerprint FROM secret_key_check WHERE id = 1"),
             sealedData: try Bool.fetchOne(db, sql: """
                 SELECT EXISTS (SELECT 1 FROM totp_credential) OR EXISTS (SELECT 1 FROM recovery_code)
                        OR EXISTS (SELECT 1 FROM mail_outbox)
                 """) ?? false)
        }
        if !FileManager.default.fileExists(atPath: path) && (state.fingerprint != nil || state.sealedData) {
            throw SecretBoxError(description: """
                the secret key file \(path) is missing, but the database was used with a key (its fingerprint is recorded at \
                the first start, and TOTP secrets, recovery codes, queued mails and open forms depend on it): restore the key file \
                from the backup that goes with this database (a new key would lock every enrolled regulator out of their \
                second factor), or, if it is lost for good, run `account-server admin forget-secret-key --confirm` \
                (docs/operations.md, "The secret key file")
                """)
        }
        let key = try SecretBox.loadOrCreateKey(path: path)
        let box = try SecretBox(key: key)
        let fingerprint = fingerprint(of: box)
        let mismatch = SecretBoxError(description: """
            the secret key file \(path) is not the key this database was sealed with: give the key file that goes with this \
            database (every instance of a deployment shares one), or, if it is lost for good, run `account-server admin \
            forget-secret-key --confirm` (docs/operations.md, "The secret key file")
            """)
        let at = Date().epochMilliseconds
        let recorded: String? = try await database.write { db in
            if let known = try String.fetchOne(db, sql: "SELECT fingerprint FROM secret_key_check WHERE id = 1") { return known }
            // A database from before the fingerprint: the key must open what it sealed. Any
            // one secret will do: an installation that met the old defect (a new key created
            // silently) holds secrets of the lost key beside those of the one in use.
            let sealed = try SQLRow.fetchAll(db, sql: "SELECT account_id, sealed_secret FROM totp_credential ORDER BY created_at DESC")
            if !sealed.isEmpty {
                let opens = sealed.contains { row in
                    let accountID: String = row["account_id"]
                    return (try? box.open(Array(row["sealed_secret"] as Data), context: "totp:\(accountID)")) != nil
                }
                guard opens else { return nil }
            }
            try db.execute(sql: "INSERT INTO secret_key_check (id, fingerprint, created_at) VALUES (1, ?, ?) ON CONFLICT (id) DO NOTHING",
                           arguments: [fingerprint, at])
            return try String.fetchOne(db, sql: "SELECT fingerprint FROM secret_key_check WHERE id = 1")
        }
        guard recorded == fingerprint else { throw mismatch }
        return key
    }

    /// An HMAC of a constant under a key derived from the server key: the same for the same
    /// key, and nothing about the key.
    static func fingerprint(of box: SecretBox) -> String {
        box.authenticationCode(Array("account-server secret key check".utf8), purpose: "key check")
            .map { String(format: "%02x", $0) }.joined()
    }
}
