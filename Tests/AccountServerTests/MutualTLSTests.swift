@testable import AccountServer
import AsyncHTTPClient
import Foundation
import Logging
import NIOSSL
import Testing
import X509

/// The SAS mTLS matrix against the real server: only a valid, allowed, unrevoked client
/// certificate over TLS 1.2+ gets a request processed.
@Suite("Mutual TLS")
struct MutualTLSTests {
    /// POSTs a fresh regulator with the given client; returns the status, or nil when the
    /// connection was refused.
    func attemptCreate(pki: TestPKI, server: RunningServer, certificate: String?, maximumVersion: TLSVersion = .tlsv13) async throws -> Int? {
        let client = try FHIRClient(pki: pki, certificate: certificate, server: server, maximumVersion: maximumVersion)
        defer { Task { await client.shutdown() } }
        let technical = UUID().uuidString.lowercased()
        do {
            return try await client.send(.POST, "/Practitioner", body: Bodies.practitioner(technical: technical, email: "\(technical.prefix(8))@test.com")).status
        } catch {
            return nil
        }
    }

    @Test func validCertificateIsServed() async throws {
        let pki = try TestPKI()
        let server = try await RunningServer.start(pki: pki)
        let status = try await attemptCreate(pki: pki, server: server, certificate: "valid")
        #expect(status == 201)
        // TLS 1.2 is allowed too.
        #expect(try await attemptCreate(pki: pki, server: server, certificate: "valid", maximumVersion: .tlsv12) == 201)
        let events = try await server.auditEvents()
        let subject = pki.clients["valid"]!.certificate.subject.description
        #expect(events.count == 2)
        #expect(events.allSatisfy { $0.actorSubject == subject && $0.actorSerial == ClientIdentity.serialHex(pki.clients["valid"]!.certificate.serialNumber) })
        await server.stop()
    }

    @Test(arguments: [nil, "wrong-cn", "wrong-ou", "revoked", "expired", "not-yet-valid", "other-ca", "server-usage"] as [String?])
    func refusedCertificatesProcessNothing(_ certificate: String?) async throws {
        let pki = try TestPKI()
        let server = try await RunningServer.start(pki: pki)
        let status = try await attemptCreate(pki: pki, server: server, certificate: certificate)
        #expect(status == nil || (400..<500).contains(status!), "\(certificate ?? "no certificate") got \(String(describing: status))")
        #expect(try await server.accountCount() == 0)
        #expect(try await server.auditEvents().isEmpty, "nothing of the request may be processed")
        await server.stop()
    }

    /// The kit's "wrong OU" certificate carries the allowed CN: without an OU allow-list it
    /// would be served, so the server refuses to start without one (as without a CN list).
    @Test func bothAllowListsAreRequired() async throws {
        let pki = try TestPKI()
        await #expect(throws: ConfigurationError.self, "no --allowed-client-ou") {
            _ = try await RunningServer.start(pki: pki) { $0.fhir.allowedClientOrganizationalUnits = [] }
        }
        await #expect(throws: ConfigurationError.self, "no --allowed-client-cn") {
            _ = try await RunningServer.start(pki: pki) { $0.fhir.allowedClientCommonNames = [] }
        }
    }

    @Test func refusalsAreLoggedWithSubjectAndSerialAndNoSecrets() async throws {
        let pki = try TestPKI()
        let server = try await RunningServer.start(pki: pki)
        for name in ["wrong-cn", "revoked"] {
            _ = try await attemptCreate(pki: pki, server: server, certificate: name)
            let certificate = pki.clients[name]!.certificate
            let serial = ClientIdentity.serialHex(certificate.serialNumber)
            let line = server.logs.all.first { $0.contains("client certificate refused") && $0.contains("serial=\(serial)") }
            #expect(line?.contains("subject=\"\(certificate.subject.description)\"") == true, "\(server.logs.all)")
        }
        _ = try await attemptCreate(pki: pki, server: server, certificate: nil)
        // Logged when the server's TLS handler reports the error, which may be after the
        // client has seen the alert.
        #expect(try await eventually { server.logs.all.contains { $0.contains("TLS handshake refused") && $0.contains("peer=") } })
        let everything = server.logs.all.joined(separator: "\n")
        #expect(!everything.contains("PRIVATE KEY") && !everything.contains("argon2"))
        await server.stop()
    }

    static let resumingClient = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Clients/tls_resume.py").path

    /// Runs Clients/tls_resume.py (Python's `ssl`, which resumes sessions for real) with one
    /// certificate of the PKI: a request, then `meanwhile`, then a request on the kept-alive
    /// connection and one on a resumed session. Returns the three JSON lines.
    func resumingClient(pki: TestPKI, server: RunningServer, certificate: String, version: String,
                        meanwhile: () async throws -> Void) async throws -> [[String: Any]] {
        let client = try #require(pki.clients[certificate])
        try pki.write(try client.certificatePEM, "\(certificate)-cert.pem")
        try pki.write(client.privateKeyPEM, "\(certificate)-key.pem")
        let go = pki.directory.appendingPathComponent("go-\(UUID().uuidString)").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = [Self.resumingClient, "127.0.0.1", String(server.port), pki.caPath,
                             pki.directory.appendingPathComponent("\(certificate)-cert.pem").path,
                             pki.directory.appendingPathComponent("\(certificate)-key.pem").path, version, go]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        let reader = output.fileHandleForReading
        var text = ""
        while !text.contains("\n") {
            let chunk = try await onDedicatedThread { reader.availableData }
            if chunk.isEmpty { break }
            text += String(decoding: chunk, as: UTF8.self)
        }
        try await meanwhile()
        FileManager.default.createFile(atPath: go, contents: nil)
        text += String(decoding: try await onDedicatedThread { reader.readDataToEndOfFile() }, as: UTF8.self)
        return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    /// A client that resumes its TLS session (session id or ticket in TLS 1.2, PSK in 1.3) is
    /// served like after a full handshake, and is refused when its certificate was revoked in
    /// between; a kept-alive connection is refused from its next request too.
    @Test(arguments: ["1.2", "1.3"])
    func resumedSessionsAreVerifiedAgain(_ version: String) async throws {
        let pki = try TestPKI()
        let server = try await RunningServer.start(pki: pki, crlPollInterval: .milliseconds(100))
        let served = try await resumingClient(pki: pki, server: server, certificate: "valid", version: version) {}
        #expect(served.count == 3, "\(served)")
        #expect(served.map { $0["status"] as? String } == ["200", "200", "200"], "\(served)")
        #expect(served.last?["reused"] as? Bool == true, "the client really resumed: \(served)")

        let revoked = try await resumingClient(pki: pki, server: server, certificate: "valid-later-revoked", version: version) {
            let reloads = server.logs.all.filter { $0.contains("client CRLs reloaded") }.count
            try pki.writeCRL(revoking: ["revoked", "valid-later-revoked"])
            #expect(try await eventually { server.logs.all.filter { $0.contains("client CRLs reloaded") }.count > reloads })
        }
        #expect(revoked.count == 3, "\(revoked)")
        #expect(revoked.first?["status"] as? String == "200")
        #expect(revoked.dropFirst().first?["status"] as? String == "403", "kept-alive connection after the revocation: \(revoked)")
        #expect(revoked.last?["status"] as? String != "200", "resumed session after the revocation: \(revoked)")
        #expect(revoked.last?["reused"] as? Bool == true || revoked.last?["status"] as? String == "handshake-failed", "\(revoked)")
        #expect(server.logs.all.contains { $0.contains("resumed TLS session refused on re-verification") }, "the resumption itself was refused")
        await server.stop()
    }

    /// A kept-alive connection whose certificate stops passing is refused once, and that
    /// refusal ends it (`Connection: close`, then the server closes it), with the slot-search
    /// relay in front of the router or without: the client's next request makes a handshake
    /// with what it holds now, instead of keeping a connection nothing will ever be served on.
    @Test(arguments: [false, true])
    func aRefusedConnectionEndsWithItsAnswer(relayed: Bool) async throws {
        let pki = try TestPKI()
        let standIn = relayed ? try await SlotSearchStandIn.start() : nil
        let server = try await RunningServer.start(pki: pki, crlPollInterval: .milliseconds(100)) { configuration in
            if let standIn { configuration.fhir.upstream = UpstreamConfiguration(url: "http://127.0.0.1:\(standIn.port)/fhir") }
        }
        let (certificate, key) = try SlotSearchUpstreamTests.clientFiles(pki, certificate: "valid-later-revoked")
        let ready = pki.directory.appendingPathComponent("ready-\(UUID().uuidString)").path
        let go = pki.directory.appendingPathComponent("go-\(UUID().uuidString)").path
        let script = RawHTTP.preamble + """
            import os, time
            sock = connect(*sys.argv[2:6])
            ask = b"GET /metadata HTTP/1.1\\r\\nHost: localhost\\r\\nAccept: application/fhir+json\\r\\n\\r\\n"
            def answer(data):
                head = data.partition(b"\\r\\n\\r\\n")[0].split(b"\\r\\n")
                return head[0].decode(), [h.decode() for h in head[1:] if h.lower().startswith(b"connection:")]
            sock.sendall(ask)
            data, _ = read_answers(sock, 1, settle=None)
            first = answer(data)
            open(sys.argv[6], "w").close()
            deadline = time.time() + 60
            while not os.path.exists(sys.argv[7]) and time.time() < deadline:
                time.sleep(0.05)
            # A PUT whose body the refusal does not wait for, with a request pipelined behind it:
            # one answer, the 403, then the end (the pipelined request is not processed, and
            # the unread body does not reset the connection under the answer).
            body = b'{"resourceType":"Practitioner"' + b' ' * 100000 + b'}'
            put = (b"PUT /Practitioner?identifier=urn:oid:1.2.250.1.71.4.2.1%7C810002673899 HTTP/1.1\\r\\nHost: localhost\\r\\n"
                   + b"Content-Type: application/fhir+json\\r\\nContent-Length: " + str(len(body)).encode() + b"\\r\\n\\r\\n" + body)
            try:
                sock.sendall(put + ask)
            except OSError:
                pass
            data = read_until_close(sock)
            second = answer(data or b"")
            print(json.dumps({"first": first[0], "second": second[0], "connection": second[1], "closed": data is not None,
                              "answers": (data or b"").count(b"HTTP/1.1 ")}))
            """
        async let run = spawnAndWait("/usr/bin/python3", ["-c", script, RawHTTP.folder, String(server.port), pki.caPath,
                                                          certificate.path, key.path, ready, go])
        #expect(try await eventually { FileManager.default.fileExists(atPath: ready) }, "the first request was answered")
        let reloads = server.logs.all.filter { $0.contains("client CRLs reloaded") }.count
        try pki.writeCRL(revoking: ["revoked", "valid-later-revoked"])
        #expect(try await eventually { server.logs.all.filter { $0.contains("client CRLs reloaded") }.count > reloads })
        let refusalsBefore = server.logs.all.filter { $0.contains("client certificate refused") }.count
        FileManager.default.createFile(atPath: go, contents: nil)
        let output = try await run
        let result = (try? JSONSerialization.jsonObject(with: output.output)) as? [String: Any] ?? [:]
        #expect(result["first"] as? String == "HTTP/1.1 200 OK", "\(result) \(String(decoding: output.errors, as: UTF8.self).suffix(600))")
        #expect((result["second"] as? String)?.hasPrefix("HTTP/1.1 403") == true, "\(result)")
        #expect(result["connection"] as? [String] == ["Connection: close"] || result["connection"] as? [String] == ["connection: close"], "\(result)")
        #expect(result["closed"] as? Bool == true, "the server ended the connection: \(result)")
        #expect(result["answers"] as? Int == 1, "the pipelined request was not processed: \(result)")
        let refusals = server.logs.all.filter { $0.contains("client certificate refused") }.count - refusalsBefore
        #expect(refusals == 1, "one request decided, the pipelined one never: \(refusals)")
        await server.stop()
        await standIn?.stop()
    }

    /// Revocation fails closed: a client CA without a CRL stops the start; a certificate
    /// issued by an intermediate nobody publishes a CRL for is refused; the opt-out lets both
    /// through, says so in the log and in /readyz.
    @Test func revocationFailsClosed() async throws {
        let pki = try TestPKI()
        await #expect(throws: ConfigurationError.self) {
            let server = try await RunningServer.start(pki: pki) { $0.fhir.clientCRLPaths = [] }
            await server.stop()
        }
        let strict = try await RunningServer.start(pki: pki)
        #expect(try await attemptCreate(pki: pki, server: strict, certificate: "valid") == 201)
        #expect(try await attemptCreate(pki: pki, server: strict, certificate: "via-intermediate") == nil, "the intermediate has no CRL")
        #expect(strict.logs.all.contains { $0.contains("client certificate refused") && $0.contains("no CRL is loaded for") })
        await strict.stop()

        let lenient = try await RunningServer.start(pki: pki) { $0.fhir.allowMissingCRL = true; $0.fhir.clientCRLPaths = [] }
        #expect(lenient.logs.all.contains { $0.contains("revocation NOT checked") })
        #expect(try await attemptCreate(pki: pki, server: lenient, certificate: "via-intermediate") == 201)
        let admin = AdminClient(server: lenient)
        let ready = try await admin.send(.GET, "/readyz", authorization: "")
        #expect(ready.status == 200 && ready.body.contains("revocation NOT checked"), "\(ready.body)")
        await admin.shutdown()
        await lenient.stop()
    }

    /// A certificate subject holding CR/LF cannot write a line of its own into the text log:
    /// the refusal is one line, with the control characters escaped.
    @Test func clientSuppliedTextCannotForgeLogLines() async throws {
        let pki = try TestPKI()
        let server = try await RunningServer.start(pki: pki)
        #expect(try await attemptCreate(pki: pki, server: server, certificate: "crlf-subject") == nil)
        let lines = server.logs.all
        let refusal = lines.first { $0.contains("client certificate refused") && $0.contains("admin token rotated") }
        #expect(refusal?.contains(#"x\r\n2026-11-29T00:00:00.000Z critical"#) == true, "\(lines)")
        #expect(!lines.contains { $0.contains("\n") || $0.contains("\r") }, "no raw line break in any log line")
        #expect(LogLineHandler.quoted("CN=x reason=ok") == #""CN=x reason=ok""# && LogLineHandler.quoted("plain") == "plain")
        #expect(LogLineHandler.escaped("a\u{85}b\u{2028}c\\d\u{7}\u{61C}") == #"a\u{85}b\u{2028}c\\d\u{7}\u{61c}"#)
        #expect(LogLineHandler.escaped("a\u{200B}b\u{FEFF}c\u{E0041}d\u{2010}") == #"a\u{200b}b\u{feff}c\u{e0041}d\#u{2010}"#)
        // Every message and value is bounded, in both formats.
        for format in [LogLineHandler.Format.text, .json] {
            let sink = LogLineSink(capturing: true)
            var logger = Logger(label: "bounds") { LogLineHandler(label: $0, format: format, sink: sink) }
            logger.logLevel = .info
            logger.notice("\(String(repeating: "m", count: 30_000))", metadata: ["subject": "\(String(repeating: "s", count: 30_000))", "short": "kept"])
            let line = try #require(sink.captured.first)
            #expect(line.utf8.count < 5_000 && line.contains("…[27952 more characters]") && line.contains("kept"), "\(format): \(line.utf8.count) bytes")
        }
        await server.stop()
    }

    /// Key files others could read are refused at start, as the server key and admin token
    /// are: the TLS private key and the OpenID Connect client secret at 0644; a key readable
    /// by a group of the server's (0640, as mounted secrets often are) is accepted.
    @Test func keyFilesOthersCanReadAreRefused() async throws {
        let pki = try TestPKI()
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: pki.serverKeyPath)
        do {
            let server = try await RunningServer.start(pki: pki)
            await server.stop()
            Issue.record("started with a TLS key readable by others")
        } catch {
            #expect("\(error)".contains("the TLS private key must not be writable by its group nor accessible to others"), "\(error)")
        }
        try FileManager.default.setAttributes([.posixPermissions: 0o640], ofItemAtPath: pki.serverKeyPath)
        let server = try await RunningServer.start(pki: pki)
        await server.stop()

        let secret = pki.directory.appendingPathComponent("oidc-secret").path
        try Data("a-client-secret\n".utf8).write(to: URL(fileURLWithPath: secret))
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: secret)
        do {
            let server = try await RunningServer.start(pki: pki) { configuration in
                configuration.web.publicURL = "https://localhost"
                var sso = SSOConfiguration(issuer: "https://127.0.0.1:9", clientID: "account-server")
                sso.clientSecretPath = secret
                configuration.sso = sso
            }
            await server.stop()
            Issue.record("started with a client secret readable by others")
        } catch {
            #expect("\(error)".contains("the OpenID Connect client secret must not be"), "\(error)")
        }
    }

    @Test func tlsBelow12IsRefusedAtTheHandshake() async throws {
        let pki = try TestPKI()
        let server = try await RunningServer.start(pki: pki)
        for version in [TLSVersion.tlsv1, .tlsv11] {
            let error = try await RawHandshake.attempt(port: server.port, tls: try pki.clientTLS("valid", maximumVersion: version))
            #expect(error?.contains("PROTOCOL_VERSION") == true, "\(version): \(error ?? "handshake completed")")
        }
        // The same client at TLS 1.2 and 1.3 completes the handshake.
        #expect(try await RawHandshake.attempt(port: server.port, tls: try pki.clientTLS("valid", maximumVersion: .tlsv12, minimumVersion: .tlsv12)) == nil)
        #expect(try await RawHandshake.attempt(port: server.port, tls: try pki.clientTLS("valid", minimumVersion: .tlsv13)) == nil)
        #expect(try await server.accountCount() == 0)
        await server.stop()
    }

    @Test func noCertificateIsRefusedAtTheHandshake() async throws {
        let pki = try TestPKI()
        let server = try await RunningServer.start(pki: pki)
        // TLS 1.2: the server's refusal arrives during the handshake itself.
        let error = try await RawHandshake.attempt(port: server.port, tls: try pki.clientTLS(nil, maximumVersion: .tlsv12))
        #expect(error != nil)
        let wrongCN = try await RawHandshake.attempt(port: server.port, tls: try pki.clientTLS("wrong-cn", maximumVersion: .tlsv12))
        #expect(wrongCN?.contains("CERTIFICATE") == true || wrongCN?.contains("certificate") == true, "\(wrongCN ?? "handshake completed")")
        await server.stop()
    }

    @Test func crlChangesApplyWithoutRestart() async throws {
        let pki = try TestPKI()
        let server = try await RunningServer.start(pki: pki, crlPollInterval: .milliseconds(100))
        #expect(try await attemptCreate(pki: pki, server: server, certificate: "valid-later-revoked") == 201)
        try pki.writeCRL(revoking: ["revoked", "valid-later-revoked"])
        #expect(try await eventually { try await attemptCreate(pki: pki, server: server, certificate: "valid-later-revoked") == nil },
                "the new CRL is polled in")
        #expect(try await attemptCreate(pki: pki, server: server, certificate: "valid") == 201)
        await server.stop()
    }

    @Test func aBrokenCRLFileKeepsThePreviousLists() async throws {
        let pki = try TestPKI()
        let server = try await RunningServer.start(pki: pki, crlPollInterval: .milliseconds(100))
        try pki.write("-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n", "crl.pem")
        #expect(try await eventually { server.logs.all.contains { $0.contains("client CRL reload failed") } }, "the broken file was read")
        #expect(try await attemptCreate(pki: pki, server: server, certificate: "revoked") == nil)
        #expect(try await attemptCreate(pki: pki, server: server, certificate: "valid") == 201)
        await server.stop()
    }

    @Test func expiredCRLFailsClosedForItsIssuer() throws {
        let pki = try TestPKI()
        let stale = try PKIBuilder.makeCRL(issuer: pki.ca, revoked: [], thisUpdate: Date().addingTimeInterval(-10 * 86400), nextUpdate: Date().addingTimeInterval(-86400))
        try pki.write(PKIBuilder.crlPEM(stale), "crl.pem")
        let store = try CRLStore(paths: [pki.crlPath], issuers: [pki.ca.certificate], logger: .init(label: "t"))
        guard case .expired = store.status(of: pki.clients["valid"]!.certificate, now: Date()) else {
            Issue.record("an expired CRL must refuse its issuer's certificates")
            return
        }
    }

    /// A CRL of a CA outside the bundle (one removed after a rotation, still published by the
    /// PKI job) can revoke nothing accepted here: skipped, and the lists of the CAs in the
    /// bundle load beside it. Alone, it leaves the CA uncovered, which refuses its callers.
    @Test func aCRLFromAnUnknownIssuerIsSkippedNotFatal() throws {
        let pki = try TestPKI()
        let revoked = pki.clients["revoked"]!.certificate
        try pki.write(PKIBuilder.crlPEM(try PKIBuilder.makeCRL(issuer: pki.otherCA, revoked: []))
                      + PKIBuilder.crlPEM(try PKIBuilder.makeCRL(issuer: pki.ca, revoked: [revoked.serialNumber])), "crl.pem")
        let store = try CRLStore(paths: [pki.crlPath], issuers: [pki.ca.certificate], logger: .init(label: "t"))
        #expect(store.snapshot.skipped.count == 1 && store.snapshot.skipped[0].contains("Some other CA"), "\(store.snapshot.skipped)")
        #expect(store.status(of: revoked, now: Date()) == .revoked(source: pki.crlPath))
        #expect(store.reload(reason: "test"), "a reload with the stray list still takes the others into use")

        try pki.write(PKIBuilder.crlPEM(try PKIBuilder.makeCRL(issuer: pki.otherCA, revoked: [])), "crl.pem")
        let alone = try CRLStore(paths: [pki.crlPath], issuers: [pki.ca.certificate], logger: .init(label: "t"))
        #expect(alone.status(of: pki.clients["valid"]!.certificate, now: Date()) == .noCRL, "the CA is uncovered: its callers are refused")
        #expect(alone.uncoveredAuthorities.count == 1)
    }

    /// A CRL without nextUpdate would never go stale: refused (RFC 5280 requires it). A list
    /// older than the one in force (a stale mirror) does not un-revoke: the newer one stays.
    @Test func crlsWithoutAnEndOrOlderThanTheOneInForceAreNotTaken() throws {
        let pki = try TestPKI()
        try pki.write(PKIBuilder.crlPEM(try PKIBuilder.makeCRL(issuer: pki.ca, revoked: [], nextUpdate: nil)), "crl.pem")
        #expect(throws: (any Error).self) { try CRLStore(paths: [pki.crlPath], issuers: [pki.ca.certificate], logger: .init(label: "t")) }

        let revoked = pki.clients["revoked"]!.certificate
        try pki.write(PKIBuilder.crlPEM(try PKIBuilder.makeCRL(issuer: pki.ca, revoked: [revoked.serialNumber])), "crl.pem")
        let store = try CRLStore(paths: [pki.crlPath], issuers: [pki.ca.certificate], logger: .init(label: "t"))
        try pki.write(PKIBuilder.crlPEM(try PKIBuilder.makeCRL(issuer: pki.ca, revoked: [], thisUpdate: Date().addingTimeInterval(-3600))), "crl.pem")
        store.reload(reason: "test")
        #expect(store.status(of: revoked, now: Date()) == .revoked(source: pki.crlPath), "the older list did not un-revoke it")
        try pki.write(PKIBuilder.crlPEM(try PKIBuilder.makeCRL(issuer: pki.ca, revoked: [], thisUpdate: Date().addingTimeInterval(-1))), "crl.pem")
        store.reload(reason: "test")
        #expect(store.status(of: revoked, now: Date()) == .good, "a newer list is taken (here: the revocation lifted by the CA)")
    }

    /// A CA renewed under the same name with a new key, both in the bundle during the
    /// changeover: each has its own list. Looked up by name alone, the newer list (of the new
    /// CA) stood for both, and what the old CA revoked passed.
    @Test func twoCAsOfOneNameEachHaveTheirOwnCRL() async throws {
        let pki = try TestPKI()
        let old = try PKIBuilder.makeCA(commonName: "IGC-Santé renewed")
        let renewed = try PKIBuilder.makeCA(commonName: "IGC-Santé renewed")
        #expect(old.certificate.subject == renewed.certificate.subject)
        let revoked = try PKIBuilder.issue(commonName: TestPKI.allowedCN, organizationalUnit: TestPKI.allowedOU, usage: .client, issuer: old)
        let fromRenewed = try PKIBuilder.issue(commonName: TestPKI.allowedCN, organizationalUnit: TestPKI.allowedOU, usage: .client, issuer: renewed)
        let oldList = PKIBuilder.crlPEM(try PKIBuilder.makeCRL(issuer: old, revoked: [revoked.certificate.serialNumber], thisUpdate: Date().addingTimeInterval(-600)))
        let renewedList = PKIBuilder.crlPEM(try PKIBuilder.makeCRL(issuer: renewed, revoked: [], thisUpdate: Date().addingTimeInterval(-60)))
        try pki.write(oldList + renewedList, "crl.pem")
        let bundle = [old.certificate, renewed.certificate]
        let store = try CRLStore(paths: [pki.crlPath], issuers: bundle, logger: .init(label: "t"))
        #expect(store.snapshot.lists.count == 2, "one list per CA, not per name")
        #expect(store.status(of: revoked.certificate, now: Date()) == .revoked(source: pki.crlPath))
        #expect(store.status(of: fromRenewed.certificate, now: Date()) == .good)
        #expect(store.uncoveredAuthorities.isEmpty)

        // /readyz tells the two lists apart by their key.
        let bundlePath = pki.directory.appendingPathComponent("renewal-bundle.pem").path
        try (old.certificatePEM + renewed.certificatePEM).write(toFile: bundlePath, atomically: true, encoding: .utf8)
        let server = try await RunningServer.start(pki: pki) { $0.fhir.clientCAPaths = [bundlePath] }
        let admin = AdminClient(server: server, token: "")
        let ready = try await admin.send(.GET, "/readyz", authorization: "")
        await admin.shutdown()
        let keyIDs = [old, renewed].map { CRLStore.Authority($0.certificate).keyID }
        #expect(ready.status == 200 && keyIDs.allSatisfy { ready.body.contains("(key \($0))") }, "\(ready.body)")
        await server.stop()

        // Through the verifier, as at the handshake: the old CA's revocation holds.
        let verifier = ClientCertificateVerifier(trustRoots: bundle, allowedCommonNames: [TestPKI.allowedCN],
                                                 allowedOrganizationalUnits: [TestPKI.allowedOU], crlStore: store, logger: .init(label: "t"))
        guard case .failure(let refusal) = await verifier.verify(presented: [revoked.certificate]) else {
            Issue.record("a certificate the old CA revoked was accepted")
            return
        }
        #expect("\(refusal)".contains("revoked"), "\(refusal)")
        guard case .success = await verifier.verify(presented: [fromRenewed.certificate]) else {
            Issue.record("the renewed CA's certificate was refused")
            return
        }

        // The renewal over, the old CA leaves the bundle while the PKI job still publishes its
        // list: skipped (its authority key id names no CA of the bundle), the renewed CA's
        // list still loads.
        store.replaceIssuers([renewed.certificate])
        #expect(store.reload(reason: "renewal over"), "\(store.snapshot.lastError ?? "")")
        #expect(store.snapshot.lists.count == 1 && store.snapshot.skipped.count == 1, "\(store.snapshot.skipped)")
        #expect(store.status(of: fromRenewed.certificate, now: Date()) == .good)

        // Only the renewed CA's list: the old CA is uncovered (its callers refused), not
        // vouched for by the other's list.
        try pki.write(renewedList, "crl.pem")
        let partial = try CRLStore(paths: [pki.crlPath], issuers: bundle, logger: .init(label: "t"))
        #expect(partial.status(of: revoked.certificate, now: Date()) == .noCRL)
        #expect(partial.uncoveredAuthorities.map(\.publicKey) == [old.certificate.publicKey])
    }

    /// An intermediate placed in the bundle as the path's anchor is checked against the list
    /// of the CA that signed it, found by its signature among same-name CAs, on every
    /// revalidation (the answer is remembered, and forgotten when the bundle changes).
    @Test func anIntermediateAnchorIsCheckedAgainstItsOwnIssuersList() throws {
        let pki = try TestPKI()
        let root = try PKIBuilder.makeCA(commonName: "IGC-Santé racine")
        let otherRoot = try PKIBuilder.makeCA(commonName: "IGC-Santé racine")
        let intermediate = try PKIBuilder.makeCA(commonName: "IGC-Santé organisations", issuer: root)
        let leaf = try PKIBuilder.issue(commonName: TestPKI.allowedCN, organizationalUnit: TestPKI.allowedOU, usage: .client, issuer: intermediate)
        try pki.write(PKIBuilder.crlPEM(try PKIBuilder.makeCRL(issuer: root, revoked: [intermediate.certificate.serialNumber]))
                      + PKIBuilder.crlPEM(try PKIBuilder.makeCRL(issuer: otherRoot, revoked: []))
                      + PKIBuilder.crlPEM(try PKIBuilder.makeCRL(issuer: intermediate, revoked: [])), "crl.pem")
        let store = try CRLStore(paths: [pki.crlPath], issuers: [otherRoot.certificate, root.certificate, intermediate.certificate], logger: .init(label: "t"))
        let path = [leaf.certificate, intermediate.certificate]
        for _ in 0..<2 {
            #expect(store.revocationProblem(path: path, now: Date())?.contains("is revoked") == true, "the intermediate, revoked by its own root")
        }
        // The root gone from the bundle: its list is skipped at the next load (another CA of
        // the same name is there, whose key did not sign it), nothing vouches for the
        // intermediate, which as an anchor passes (only a loaded list is applied to it).
        store.replaceIssuers([otherRoot.certificate, intermediate.certificate])
        #expect(store.reload(reason: "test"), "\(store.snapshot.lastError ?? "")")
        #expect(store.snapshot.skipped.count == 1, "\(store.snapshot.skipped)")
        #expect(store.revocationProblem(path: path, now: Date()) == nil)
    }

    @Test func crlWithABadSignatureIsRefused() throws {
        let pki = try TestPKI()
        // Same issuer name, signed by another key.
        let impostor = IssuedCertificate(certificate: pki.ca.certificate, privateKey: pki.otherCA.privateKey)
        try pki.write(PKIBuilder.crlPEM(try PKIBuilder.makeCRL(issuer: impostor, revoked: [])), "crl.pem")
        #expect(throws: (any Error).self) { try CRLStore(paths: [pki.crlPath], issuers: [pki.ca.certificate], logger: .init(label: "t")) }
    }

    @Test func derCRLFilesAreRead() throws {
        let pki = try TestPKI()
        let der = try PKIBuilder.makeCRL(issuer: pki.ca, revoked: [pki.clients["revoked"]!.certificate.serialNumber])
        let path = pki.directory.appendingPathComponent("crl.der").path
        try Data(der).write(to: URL(fileURLWithPath: path))
        let store = try CRLStore(paths: [path], issuers: [pki.ca.certificate], logger: .init(label: "t"))
        #expect(store.status(of: pki.clients["revoked"]!.certificate, now: Date()) == .revoked(source: path))
        #expect(store.status(of: pki.clients["valid"]!.certificate, now: Date()) == .good)
    }

    func verifier(_ pki: TestPKI) throws -> ClientCertificateVerifier {
        let crls = try CRLStore(paths: [pki.crlPath], issuers: [pki.ca.certificate], allowMissing: true, logger: .init(label: "t"))
        return ClientCertificateVerifier(trustRoots: [pki.ca.certificate], allowedCommonNames: [TestPKI.allowedCN],
                                         allowedOrganizationalUnits: [TestPKI.allowedOU], crlStore: crls, logger: .init(label: "t"))
    }

    /// A subject with two CNs is refused even when one is listed (which one names the caller
    /// would be each reader's guess); several OUs pass when one is listed, as documented.
    @Test func aCertificateWithTwoCNsIsRefused() async throws {
        let pki = try TestPKI()
        let verifier = try verifier(pki)
        let twoNames = try PKIBuilder.issue(commonName: TestPKI.allowedCN, organizationalUnit: TestPKI.allowedOU, usage: .client,
                                            extraCommonNames: ["evil.example"], issuer: pki.ca)
        guard case .failure(let refusal) = await verifier.verify(presented: [twoNames.certificate]) else {
            Issue.record("a certificate with two CNs, one of them listed, was accepted")
            return
        }
        #expect("\(refusal)".contains("2 CNs"), "\(refusal)")
        let listedTwice = try PKIBuilder.issue(commonName: TestPKI.allowedCN, organizationalUnit: TestPKI.allowedOU, usage: .client,
                                               extraCommonNames: [TestPKI.allowedCN], issuer: pki.ca)
        guard case .failure = await verifier.verify(presented: [listedTwice.certificate]) else {
            Issue.record("a certificate with its CN twice was accepted")
            return
        }
        let oneName = try PKIBuilder.issue(commonName: TestPKI.allowedCN, organizationalUnit: TestPKI.allowedOU, usage: .client, issuer: pki.ca)
        guard case .success = await verifier.verify(presented: [oneName.certificate]) else {
            Issue.record("the control certificate was refused")
            return
        }
    }

    /// A presentation longer than any IGC-Santé path is refused before the path search (which
    /// is exponential in same-named intermediates); one within the bound still validates.
    @Test func aLongPresentedChainIsRefusedBeforeThePathSearch() async throws {
        let pki = try TestPKI()
        let verifier = try verifier(pki)
        var issuers = [pki.ca]
        for depth in 1...ClientCertificateVerifier.maximumPresentedCertificates {
            issuers.append(try PKIBuilder.makeCA(commonName: "Intermediate \(depth)", issuer: issuers.last!))
        }
        func presented(intermediates: Int) throws -> [Certificate] {
            let issuer = issuers[intermediates]
            let leaf = try PKIBuilder.issue(commonName: TestPKI.allowedCN, organizationalUnit: TestPKI.allowedOU, usage: .client, issuer: issuer)
            return [leaf.certificate] + issuers[1...intermediates].reversed().map(\.certificate)
        }
        let longest = ClientCertificateVerifier.maximumPresentedCertificates - 1
        guard case .success = await verifier.verify(presented: try presented(intermediates: longest)) else {
            Issue.record("a path of \(longest) intermediates is within the bound")
            return
        }
        guard case .failure(let refusal) = await verifier.verify(presented: try presented(intermediates: longest + 1)) else {
            Issue.record("\(longest + 1) intermediates must be refused")
            return
        }
        #expect(refusal.reason.contains("certificates presented"), "\(refusal.reason)")
    }

    /// A client CA taken out of the bundle (SIGHUP) refuses the next request of a connection
    /// verified against it, even one whose last check still stood.
    @Test func aRemovedClientCARefusesConnectionsVerifiedAgainstIt() async throws {
        let pki = try TestPKI()
        let verifier = try verifier(pki)
        guard case .success(let identity) = await verifier.verify(presented: [pki.clients["valid"]!.certificate]) else {
            Issue.record("the valid client is accepted")
            return
        }
        guard case .success(let standing) = verifier.revalidate(identity, previous: nil) else {
            Issue.record("and passes its re-check")
            return
        }
        verifier.replaceTrustRoots([pki.ca.certificate, pki.otherCA.certificate])
        guard case .success(let again) = verifier.revalidate(identity, previous: standing) else {
            Issue.record("a CA added beside it changes nothing")
            return
        }
        verifier.replaceTrustRoots([pki.otherCA.certificate])
        guard case .failure(let refusal) = verifier.revalidate(identity, previous: again) else {
            Issue.record("the CA it was verified against is gone: refused")
            return
        }
        #expect(refusal.reason.contains("no longer trusted"), "\(refusal.reason)")
    }
}
