@testable import AccountServer
import Accounts
import AsyncHTTPClient
import Foundation
import Testing

/// Topology 1: the vendor's nginx terminates the SAS's mutual TLS, exactly as
/// docs/nginx/fhir-mtls-proxy.conf says, routes INT_R02 to account-server with the verified
/// certificate in `X-SSL-Client-Cert`, and everything else to the INT_R01 backend.
@Suite("Behind the vendor's mTLS-terminating nginx")
struct NginxMutualTLSProxyTests {
    struct Rig {
        let pki: TestPKI
        let backend: SlotSearchStandIn
        let server: RunningServer
        let nginx: NginxProxy
        var front: String { "https://localhost:\(nginx.port)" }

        func stop() async {
            nginx.stop()
            await server.stop()
            await backend.stop()
        }
    }

    static func rig() async throws -> Rig {
        let pki = try TestPKI()
        let backend = try await SlotSearchStandIn.start(prefix: "")
        let server = try await RunningServer.start(pki: pki, crlPollInterval: .milliseconds(200)) { configuration in
            configuration.fhir.clientCertificateHeader = "X-SSL-Client-Cert"
            configuration.fhir.trustedProxies = ["127.0.0.1"]
            configuration.fhir.proxyClientCAPaths = [pki.proxyCAPath]
            configuration.fhir.proxyClientNames = [TestPKI.proxyCN]
            configuration.fhir.upstream = UpstreamConfiguration(url: "http://127.0.0.1:\(backend.port)")
        }
        // nginx's own copy of the CRL: the test later revokes a certificate at account-server only.
        let nginxCRL = pki.directory.appendingPathComponent("nginx-crl.pem")
        try FileManager.default.copyItem(atPath: pki.crlPath, toPath: nginxCRL.path)
        let port = freeLoopbackPort()
        let nginx = try await NginxProxy(port: port, pki: pki, template: "fhir-mtls-proxy.conf", values: [
            "LISTEN": "127.0.0.1:\(port)", "SERVER_NAME": "localhost", "CERTIFICATE": pki.serverCertificatePath, "KEY": pki.serverKeyPath,
            "CLIENT_CA": pki.caPath, "CLIENT_CRL": nginxCRL.path,
            "ACCOUNT_SERVER_FHIR": "127.0.0.1:\(server.port)", "INT_R01_BACKEND": "127.0.0.1:\(backend.port)",
            "ACCOUNT_SERVER_NAME": "localhost", "ACCOUNT_SERVER_CA": pki.caPath,
            "PROXY_CERTIFICATE": pki.proxyCertificatePath, "PROXY_KEY": pki.proxyKeyPath,
        ])
        return Rig(pki: pki, backend: backend, server: server, nginx: nginx)
    }

    /// The INT_R02 matrix through nginx: whichever gate refuses (nginx for a missing,
    /// expired, foreign or revoked certificate; account-server for CN, OU and its own CRL),
    /// the answer is a FHIR 403 and nothing is written.
    @Test func theCertificateMatrixThroughNginx() async throws {
        let rig = try await Self.rig()
        var created = 0
        for name in ["valid", "wrong-cn", "wrong-ou", "revoked", "expired", "other-ca", "server-usage", nil] as [String?] {
            let client = try FHIRClient(pki: rig.pki, certificate: name, server: rig.server, baseURL: rig.front)
            let reply = try await client.send(.POST, "/Practitioner", body: Bodies.practitioner(technical: UUID().uuidString.lowercased(),
                                                                                             email: "matrix-\(name ?? "none")@test.fr"))
            await client.shutdown()
            if name == "valid" {
                #expect(reply.status == 201, "\(reply.body)")
                created += 1
            } else {
                #expect(reply.status == 403, "\(name ?? "no certificate"): \(reply.status) \(reply.body)")
                #expect(reply["resourceType"] == .string("OperationOutcome"), "\(name ?? "no certificate"): \(reply.body)")
            }
        }
        #expect(try await rig.server.accountCount() == created)
        let refusals = rig.server.logs.all.filter { $0.contains("client certificate refused") }
        #expect(refusals.contains { $0.contains("CN=intruder.invalid") }, "account-server checked the CN itself")
        #expect(refusals.contains { $0.contains("OU=OTHER") }, "and the OU")
        // The documented set-up (the proxy's own certificate checked) does not get the warning
        // meant for address-only trust.
        #expect(!rig.server.logs.all.contains { $0.contains("recognised by its address alone") })
        #expect(rig.server.logs.all.contains { $0.contains("checked against --fhir-proxy-client-ca without a CRL") }, "the same start-up step was logged")

        // Revoked at account-server only (nginx still has the old CRL): refused all the same.
        let reloads = rig.server.logs.all.filter { $0.contains("client CRLs reloaded") }.count
        try rig.pki.writeCRL(revoking: ["revoked", "valid-later-revoked"])
        #expect(try await eventually { rig.server.logs.all.filter { $0.contains("client CRLs reloaded") }.count > reloads }, "the new CRL is polled in")
        let later = try FHIRClient(pki: rig.pki, certificate: "valid-later-revoked", server: rig.server, baseURL: rig.front)
        let refused = try await later.send(.POST, "/Practitioner", body: Bodies.practitioner(technical: UUID().uuidString.lowercased(), email: "later@test.fr"))
        #expect(refused.status == 403 && refused.body.contains("OperationOutcome"), "\(refused.status) \(refused.body)")
        await later.shutdown()
        #expect(try await rig.server.accountCount() == created)

        // The audit trail has the SAS's certificate as account-server verified it.
        let events = try await rig.server.auditEvents()
        #expect(events.contains { $0.actorSubject?.contains("CN=\(TestPKI.allowedCN)") == true && $0.actorAddress == "127.0.0.1" })
        #expect(rig.backend.requests.isEmpty, "INT_R02 never reaches the slot search")
        await rig.stop()
    }

    @Test func slotSearchGoesToTheBackendAndMetadataDescribesTheWholeEndpoint() async throws {
        let rig = try await Self.rig()
        let client = try FHIRClient(pki: rig.pki, certificate: "valid", server: rig.server, baseURL: rig.front)
        let slots = try await client.raw("/Slot?start=ge2026-11-23")
        #expect(slots.status == 200)
        #expect(slots.body == Array(SlotSearchStandIn.slotBundle.utf8))
        let metadata = try await client.send(.GET, "/metadata")
        #expect(metadata.status == 200 && metadata.body.contains(#""type":"Slot""#) && metadata.body.contains(#""code":"create""#))
        let search = try await client.send(.GET, "/Practitioner?name=Martin")
        #expect(search.status == 200 && search.body.contains("upstream?name=Martin"), "Practitioner searches reach the slot search through account-server")
        let seen = rig.backend.requests
        #expect(seen.count == 3)
        // What the backend got through account-server carries the identity account-server verified.
        #expect(seen.last?[values: .init("X-SSL-Client-Verify")!] == ["SUCCESS"])
        // INT_R02 requests are in nginx's access log without their query (an IDNPS names a
        // regulator); the slot search's keep theirs.
        let put = try await client.send(.PUT, "/Practitioner?identifier=urn:oid:1.2.250.1.71.4.2.1%7C810002673899",
                                        body: Bodies.practitioner(national: "810002673899", email: "nginx-log@test.fr"))
        #expect(put.status == 201, "\(put.body)")
        let log = try String(contentsOf: rig.nginx.directory.appendingPathComponent("logs/access.log"), encoding: .utf8)
        #expect(log.contains("\"PUT /Practitioner HTTP/1.1\" 201") && !log.contains("810002673899"), "\(log)")
        #expect(log.contains("/Slot?start=ge2026-11-23"), "\(log)")
        await client.shutdown()
        await rig.stop()
    }

    /// The certificate header is believed only from the proxy: its address *and* its own
    /// client certificate (proxy mTLS), and only when it holds a certificate that passes every
    /// check. A local process at nginx's address, even holding the SAS's public certificate,
    /// gets nothing.
    @Test func aForgedCertificateHeaderIsRefused() async throws {
        let rig = try await Self.rig()
        let direct = "https://localhost:\(rig.server.port)/Practitioner"
        let asProxy = ["--cacert", rig.pki.caPath, "--cert", rig.pki.proxyCertificatePath, "--key", rig.pki.proxyKeyPath]
        try rig.pki.write(try rig.pki.clients["valid"]!.certificatePEM, "sas.pem")
        try rig.pki.write(rig.pki.clients["valid"]!.privateKeyPEM, "sas-key.pem")
        let valid = try #require(ForwardedCertificate.escapedPEM(rig.pki.clients["valid"]!.certificate))
        let wrongCN = try #require(ForwardedCertificate.escapedPEM(rig.pki.clients["wrong-cn"]!.certificate))
        func post(from source: String, headers: [String]) async throws -> (String, String) {
            try await onDedicatedThread {
                let body = Bodies.practitioner(technical: UUID().uuidString.lowercased(), email: "forged-\(UUID().uuidString.prefix(8))@test.fr")
                return Self.curl(asProxy + ["--interface", source, "-X", "POST", "-H", "Content-Type: application/fhir+json", "--data", body]
                                 + headers.flatMap { ["-H", $0] } + [direct])
            }
        }
        let cases: [(String, [String], String)] = [
            ("127.0.0.2", ["X-SSL-Client-Cert: \(valid)"], "a valid certificate header from an untrusted address"),
            ("127.0.0.1", [], "no certificate header"),
            ("127.0.0.1", ["X-SSL-Client-Cert: (null)"], "an unreadable header"),
            ("127.0.0.1", ["X-SSL-Client-Cert: \(valid)", "X-SSL-Client-Cert: \(valid)"], "two certificate headers"),
            ("127.0.0.1", ["X-SSL-Client-Cert: \(wrongCN)"], "a certificate with a CN not allowed"),
        ]
        for (source, headers, label) in cases {
            let (status, body) = try await post(from: source, headers: headers)
            #expect(status == "403", "\(label): \(status)")
            #expect(body.contains(#""resourceType":"OperationOutcome""#) && body.contains(#""code":"security""#), "\(label): \(body)")
        }
        #expect(try await rig.server.accountCount() == 0)
        #expect(rig.server.logs.all.contains { $0.contains("not from a trusted proxy") && $0.contains("127.0.0.2") })
        // From nginx's address but without nginx's certificate (a local process, an SSRF):
        // no certificate, the SAS's own certificate, or plain HTTP: nothing gets through.
        let body = Bodies.practitioner(technical: UUID().uuidString.lowercased(), email: "local-process@test.fr")
        let header = ["-H", "X-SSL-Client-Cert: \(valid)", "-H", "Content-Type: application/fhir+json", "--data", body]
        for (label, arguments) in [("no client certificate", ["--cacert", rig.pki.caPath] + header + [direct]),
                                   ("the SAS's certificate", ["--cacert", rig.pki.caPath, "--cert", rig.pki.directory.appendingPathComponent("sas.pem").path,
                                                               "--key", rig.pki.directory.appendingPathComponent("sas-key.pem").path] + header + [direct]),
                                   ("plain HTTP", header + ["http://127.0.0.1:\(rig.server.port)/Practitioner"])] {
            let (status, _) = try await onDedicatedThread { Self.curl(arguments) }
            #expect(status != "201" && !status.hasPrefix("2"), "\(label): \(status)")
        }
        #expect(try await rig.server.accountCount() == 0)
        // The proxy (address and certificate) with a valid forwarded certificate is believed.
        let (trusted, _) = try await post(from: "127.0.0.1", headers: ["X-SSL-Client-Cert: \(valid)"])
        #expect(trusted == "201")
        // Slot searches sent straight to account-server are refused the same way.
        let (search, _) = try await onDedicatedThread { Self.curl(asProxy + ["--interface", "127.0.0.2", "https://localhost:\(rig.server.port)/Slot"]) }
        #expect(search == "403")
        #expect(rig.backend.requests.isEmpty)
        await rig.stop()
    }

    /// `--fhir-proxy-tls`: the proxy reaches the FHIR listener over TLS (server certificate
    /// only); the trusted-address and certificate-header rules are unchanged.
    @Test func theProxyListenerCanSpeakTLS() async throws {
        let pki = try TestPKI()
        let server = try await RunningServer.start(pki: pki) { configuration in
            configuration.fhir.clientCertificateHeader = "X-SSL-Client-Cert"
            configuration.fhir.trustedProxies = ["127.0.0.1"]
            configuration.fhir.proxyTLS = true
        }
        let valid = try #require(ForwardedCertificate.escapedPEM(pki.clients["valid"]!.certificate))
        let body = Bodies.practitioner(technical: UUID().uuidString.lowercased(), email: "proxy-tls@test.fr")
        let (created, _) = try await onDedicatedThread {
            Self.curl(["--cacert", pki.caPath, "-X", "POST", "-H", "Content-Type: application/fhir+json", "-H", "X-SSL-Client-Cert: \(valid)",
                       "--data", body, "https://localhost:\(server.port)/Practitioner"])
        }
        #expect(created == "201")
        let (plain, _) = try await onDedicatedThread {
            Self.curl(["-X", "POST", "-H", "X-SSL-Client-Cert: \(valid)", "--data", body, "http://127.0.0.1:\(server.port)/Practitioner"])
        }
        #expect(plain != "201", "plain HTTP is not served when --fhir-proxy-tls is on (got \(plain))")
        let (untrusted, _) = try await onDedicatedThread {
            Self.curl(["--interface", "127.0.0.2", "--cacert", pki.caPath, "-H", "X-SSL-Client-Cert: \(valid)", "https://localhost:\(server.port)/metadata"])
        }
        #expect(untrusted == "403")
        #expect(try await server.accountCount() == 1)
        await server.stop()
    }

    @Test func proxyModeConfigurationErrors() async throws {
        let pki = try TestPKI()
        await #expect(throws: ConfigurationError.self, "a header without trusted proxies") {
            _ = try await RunningServer.start(pki: pki) { $0.fhir.clientCertificateHeader = "X-SSL-Client-Cert" }
        }
        await #expect(throws: ConfigurationError.self, "trusted proxies without a header") {
            _ = try await RunningServer.start(pki: pki) { $0.fhir.trustedProxies = ["127.0.0.1"] }
        }
        await #expect(throws: ConfigurationError.self, "plain HTTP off loopback") {
            _ = try await RunningServer.start(pki: pki) {
                $0.fhir.clientCertificateHeader = "X-SSL-Client-Cert"
                $0.fhir.trustedProxies = ["10.0.0.5"]
                $0.fhir.host = "0.0.0.0"
            }
        }
        await #expect(throws: ConfigurationError.self, "a proxy CA without the proxy's name") {
            _ = try await RunningServer.start(pki: pki) {
                $0.fhir.clientCertificateHeader = "X-SSL-Client-Cert"
                $0.fhir.trustedProxies = ["127.0.0.1"]
                $0.fhir.proxyClientCAPaths = [pki.proxyCAPath]
            }
        }
        await #expect(throws: ConfigurationError.self, "a proxy CA without certificate forwarding") {
            _ = try await RunningServer.start(pki: pki) { $0.fhir.proxyClientCAPaths = [pki.proxyCAPath]; $0.fhir.proxyClientNames = [TestPKI.proxyCN] }
        }
        await #expect(throws: ConfigurationError.self, "an upstream that is not an http(s) URL") {
            _ = try await RunningServer.start(pki: pki) { $0.fhir.upstream = UpstreamConfiguration(url: "ftp://agenda/fhir") }
        }
    }

    /// curl's status code and body.
    static func curl(_ arguments: [String]) -> (String, String) {
        let bodyFile = FileManager.default.temporaryDirectory.appendingPathComponent("curl-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: bodyFile) }
        let run = spawnAndWaitHere("/usr/bin/curl", ["-s", "-o", bodyFile.path, "-w", "%{http_code}", "--max-time", "30"] + arguments)
        guard run.status != -1 else { return ("000", "") }
        return (String(decoding: run.output, as: UTF8.self), (try? String(contentsOf: bodyFile, encoding: .utf8)) ?? "")
    }
}
