@testable import AccountServer
import Accounts
import AsyncHTTPClient
import Foundation
import NIOCore
import Testing

/// Hostile input through the real endpoint (mTLS, real HTTP): every answer is a 4xx
/// OperationOutcome or a closed connection, the server stays healthy, nothing is written.
@Suite("Hostile input on the FHIR endpoint")
struct HostileInputTests {
    /// What a raw client saw: the status line (empty when none), whether the server closed
    /// the connection, and after how long.
    struct RawOutcome: Decodable {
        var status: String
        var body: String
        var closed: Bool
        var elapsed: Double
    }

    /// Sends `pieces` over a TLS connection presenting the valid client certificate, sleeping
    /// between pieces, then reads until the server closes, a whole answer has arrived, or
    /// `wait` seconds pass. `wait` is generous: the event loops of this test process are
    /// shared by every test running at once, and a loaded machine delays them by seconds.
    static func raw(_ server: RunningServer, pki: TestPKI, pieces: [(bytes: [UInt8], sleep: Double)], wait: Double = 30) async throws -> RawOutcome {
        let client = pki.directory.appendingPathComponent("raw-client.pem")
        let key = pki.directory.appendingPathComponent("raw-client-key.pem")
        try pki.clients["valid"]!.certificatePEM.write(to: client, atomically: true, encoding: .utf8)
        try pki.clients["valid"]!.privateKeyPEM.write(to: key, atomically: true, encoding: .utf8)
        let plan = pieces.map { ["b64": Data($0.bytes).base64EncodedString(), "sleep": $0.sleep] as [String: Any] }
        let planFile = pki.directory.appendingPathComponent("plan-\(UUID().uuidString).json")
        try JSONSerialization.data(withJSONObject: plan).write(to: planFile)
        let script = """
            import base64, json, socket, ssl, sys, time
            port, ca, cert, key, plan_file, wait = sys.argv[1:7]
            context = ssl.create_default_context(cafile=ca)
            context.load_cert_chain(cert, key)
            sock = context.wrap_socket(socket.create_connection(("127.0.0.1", int(port))), server_hostname="localhost")
            start = time.time()
            try:
                for piece in json.load(open(plan_file)):
                    sock.sendall(base64.b64decode(piece["b64"]))
                    time.sleep(piece["sleep"])
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass
            sock.settimeout(float(wait))
            data, closed = b"", False
            try:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        closed = True
                        break
                    data += chunk
                    # A whole answer is enough: a connection kept alive after it is not
                    # waited for.
                    head, found, rest = data.partition(b"\\r\\n\\r\\n")
                    if found:
                        length = [line.split(b":", 1)[1].strip() for line in head.split(b"\\r\\n")[1:] if line.lower().startswith(b"content-length:")]
                        if length and len(rest) >= int(length[0]):
                            break
                        if b"chunked" in head.lower() and rest.endswith(b"0\\r\\n\\r\\n"):
                            break
            except socket.timeout:
                pass
            except (ConnectionResetError, ssl.SSLError, OSError):
                closed = True
            head, _, body = data.partition(b"\\r\\n\\r\\n")
            print(json.dumps({"status": head.split(b"\\r\\n")[0].decode("latin-1"), "body": body.decode("utf-8", "replace")[:2000],
                              "closed": closed, "elapsed": time.time() - start}))
            """
        let arguments = ["-c", script, String(server.port), pki.caPath, client.path, key.path, planFile.path, String(wait)]
        let output = try await spawnAndWait("/usr/bin/python3", arguments).output
        return try JSONDecoder().decode(RawOutcome.self, from: output)
    }

    static func request(_ head: String, body: [UInt8] = []) -> [UInt8] {
        Array(head.replacingOccurrences(of: "\n", with: "\r\n").utf8) + body
    }

    /// A 4xx OperationOutcome, or the connection closed without a success.
    static func refused(_ outcome: RawOutcome) -> Bool {
        if outcome.status.isEmpty { return outcome.closed }
        let parts = outcome.status.split(separator: " ")
        guard parts.count >= 2, let code = Int(parts[1]), (400..<500).contains(code) else { return false }
        return outcome.body.isEmpty || outcome.body.contains("OperationOutcome")
    }

    @Test func bodiesThatMustBeRefused() async throws {
        let pki = try TestPKI()
        let server = try await RunningServer.start(pki: pki)
        let client = try FHIRClient(pki: pki, certificate: "valid", server: server)
        let valid = Bodies.practitioner(national: "810002673899")
        let longValue = String(repeating: "8", count: 100_000)
        let bodies: [(String, String)] = [
            ("empty body", ""),
            ("malformed JSON", "{\"resourceType\":\"Practitioner\","),
            ("trailing garbage", valid + "x"),
            ("two documents", valid + valid),
            ("duplicate key", valid.replacingOccurrences(of: #""active":true"#, with: #""active":true,"active":true"#)),
            ("deep nesting in a member", valid.replacingOccurrences(of: #""active":true"#, with: #""active":true,"extension":"# + String(repeating: "[", count: 5000) + String(repeating: "]", count: 5000))),
            ("null member", valid.replacingOccurrences(of: #""active":true"#, with: #""active":null"#)),
            ("null in an array", valid.replacingOccurrences(of: #""given":["#, with: #""given":[null,"#)),
            ("empty string", valid.replacingOccurrences(of: "MARIUS", with: "")),
            ("empty array", valid.replacingOccurrences(of: #""active":true"#, with: #""active":true,"address":[]"#)),
            ("empty object", valid.replacingOccurrences(of: #""active":true"#, with: #""active":true,"meta":{}"#)),
            ("wrong type: active as string", valid.replacingOccurrences(of: #""active":true"#, with: #""active":"true""#)),
            ("wrong type: name as object", valid.replacingOccurrences(of: #""name":["#, with: #""name":{"x":["#).replacingOccurrences(of: "}],\"telecom\"", with: "}]},\"telecom\"")),
            ("wrong type: identifier as string", #"{"resourceType":"Practitioner","identifier":"810002673899","active":true}"#),
            ("oversized identifier", Bodies.practitioner(national: longValue)),
            ("oversized technical id", Bodies.practitioner(technical: longValue)),
            ("oversized e-mail", Bodies.practitioner(national: "810002673899", email: String(repeating: "a", count: 100_000) + "@test.fr")),
            ("huge number where a boolean belongs", valid.replacingOccurrences(of: #""active":true"#, with: #""active":1"# + String(repeating: "0", count: 100_000))),
            ("lone surrogate escape", valid.replacingOccurrences(of: "MARIUS", with: "MA\\uD800RIUS")),
            ("control character", valid.replacingOccurrences(of: "MARIUS", with: "MA\u{1}RIUS")),
            ("other resource type", valid.replacingOccurrences(of: #""resourceType":"Practitioner""#, with: #""resourceType":"Patient""#)),
        ]
        for (label, body) in bodies {
            let reply = try await client.send(.POST, "/Practitioner", body: body)
            #expect((400..<500).contains(reply.status), "\(label) → \(reply.status)")
            #expect(reply["resourceType"] == .string("OperationOutcome"), "\(label): \(reply.body.prefix(200))")
        }
        // The same bodies as conditional updates.
        for (label, body) in bodies.prefix(8) {
            let reply = try await client.send(.PUT, "/Practitioner?identifier=urn:oid:1.2.250.1.71.4.2.1%7C810002673899", body: body)
            #expect((400..<500).contains(reply.status), "PUT \(label) → \(reply.status)")
        }

        // Invalid UTF-8 at several places, and a body over the 1 MiB limit, declared or chunked.
        for bytes in [[0xFF] + Array(valid.utf8), Array(valid.utf8) + [0xC0, 0x80], Array(valid.utf8.prefix(60)) + [0xED, 0xA0, 0x80] + Array(valid.utf8.dropFirst(60))] {
            let reply = try await client.raw("/Practitioner", method: .POST, body: ByteBuffer(bytes: bytes), headers: [("Content-Type", "application/fhir+json")])
            #expect(reply.status == 400)
        }
        let huge = ByteBuffer(repeating: UInt8(ascii: " "), count: 2 << 20)
        let declared = try await client.raw("/Practitioner", method: .POST, body: huge, headers: [("Content-Type", "application/fhir+json")])
        #expect(declared.status == 413)
        var chunked = HTTPClientRequest(url: server.baseURL + "/Practitioner")
        chunked.method = .POST
        chunked.headers.add(name: "Content-Type", value: "application/fhir+json")
        chunked.body = .stream(AsyncStream<ByteBuffer> { continuation in
            for _ in 0..<40 { continuation.yield(ByteBuffer(repeating: UInt8(ascii: " "), count: 64 * 1024)) }
            continuation.finish()
        }, length: .unknown)
        let streamed = try? await client.client.execute(chunked, timeout: .seconds(10))
        #expect(streamed == nil || streamed!.status.code == 413, "a chunked body over the limit: \(streamed.map { "\($0.status.code)" } ?? "closed")")

        #expect(try await server.accountCount() == 0, "nothing was written")

        // Nearly 1 MiB of nulls is ~200,000 issues: the refusal's audit row stays small.
        let nulls = #"{"resourceType":"Practitioner","identifier":["# + Array(repeating: "null", count: 200_000).joined(separator: ",") + "]}"
        let refusedNulls = try await client.send(.POST, "/Practitioner", body: nulls)
        #expect(refusedNulls.status == 400 && refusedNulls.body.utf8.count < 64 * 1024, "\(refusedNulls.body.utf8.count) bytes")
        let largestRow = try await server.auditEvents().map { [$0.detail, $0.identifier, $0.changes].compactMap { $0?.utf8.count }.reduce(0, +) }.max() ?? 0
        #expect(largestRow < 16 * 1024, "largest audit row: \(largestRow) bytes")

        let healthy = try await client.send(.POST, "/Practitioner", body: valid)
        #expect(healthy.status == 201, "the server still serves: \(healthy.body)")
        await client.shutdown()
        await server.stop()
    }

    /// The web listener's forms: a body sent without Content-Length that grows past the 16 KiB
    /// limit gets the French 413 page, not a 500.
    @Test func webFormsOverTheLimitGet413() async throws {
        let pki = try TestPKI()
        let server = try await RunningServer.start(pki: pki)
        let owned = OwnedHTTPClient(.init(tlsConfiguration: try pki.clientTLS(nil)))
        let client = owned.client
        var request = HTTPClientRequest(url: server.webURL + "/connexion")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
        request.headers.add(name: "Origin", value: server.webURL)
        request.body = .stream(AsyncStream<ByteBuffer> { continuation in
            for _ in 0..<8 { continuation.yield(ByteBuffer(string: "email=" + String(repeating: "a", count: 8 * 1024))) }
            continuation.finish()
        }, length: .unknown)
        let response = try await client.execute(request, timeout: .seconds(10))
        let body = String(buffer: try await response.body.collect(upTo: 1 << 20))
        #expect(response.status.code == 413, "\(response.status.code)")
        #expect(body.contains("Formulaire trop volumineux"))
        await owned.shutdown()
        await server.stop()
    }

    @Test func headerAndFramingAbuse() async throws {
        let pki = try TestPKI()
        let server = try await RunningServer.start(pki: pki)
        let body = Array(Bodies.practitioner(national: "810002673899").utf8)
        let cases: [(String, [UInt8])] = [
            ("header of 200 KB", Self.request("POST /Practitioner HTTP/1.1\nHost: localhost\nContent-Type: application/fhir+json\nX-Big: \(String(repeating: "a", count: 200_000))\nContent-Length: \(body.count)\n\n", body: body)),
            ("5,000 headers", Self.request("POST /Practitioner HTTP/1.1\nHost: localhost\nContent-Type: application/fhir+json\n" + (0..<5000).map { "X-H\($0): v\n" }.joined() + "Content-Length: \(body.count)\n\n", body: body)),
            ("URL of 200 KB", Self.request("GET /Practitioner?identifier=\(String(repeating: "a", count: 200_000)) HTTP/1.1\nHost: localhost\n\n")),
            ("non-numeric Content-Length", Self.request("POST /Practitioner HTTP/1.1\nHost: localhost\nContent-Type: application/fhir+json\nContent-Length: abc\n\n", body: body)),
            ("two different Content-Lengths", Self.request("POST /Practitioner HTTP/1.1\nHost: localhost\nContent-Type: application/fhir+json\nContent-Length: \(body.count)\nContent-Length: 5\n\n", body: body)),
            ("Content-Length and chunked", Self.request("POST /Practitioner HTTP/1.1\nHost: localhost\nContent-Type: application/fhir+json\nContent-Length: \(body.count)\nTransfer-Encoding: chunked\n\n", body: body)),
            ("bad chunk size", Self.request("POST /Practitioner HTTP/1.1\nHost: localhost\nContent-Type: application/fhir+json\nTransfer-Encoding: chunked\n\nzz\r\n{}\r\n0\r\n\r\n")),
            ("header without colon", Self.request("POST /Practitioner HTTP/1.1\nHost: localhost\nBroken header line\nContent-Length: \(body.count)\n\n", body: body)),
            ("NUL in a header", Self.request("POST /Practitioner HTTP/1.1\nHost: localhost\nContent-Type: application/fhir+json\u{0}x\nContent-Length: \(body.count)\n\n", body: body)),
            ("HTTP/0.9 request line", Self.request("GET /metadata\n\n")),
            ("unknown method", Self.request("BREW /Practitioner HTTP/1.1\nHost: localhost\nContent-Length: 0\n\n")),
            ("content type not FHIR", Self.request("POST /Practitioner HTTP/1.1\nHost: localhost\nContent-Type: text/xml\nContent-Length: \(body.count)\n\n", body: body)),
            ("two content types", Self.request("POST /Practitioner HTTP/1.1\nHost: localhost\nContent-Type: application/fhir+json\nContent-Type: text/plain\nContent-Length: \(body.count)\n\n", body: body)),
        ]
        for (label, bytes) in cases {
            let outcome = try await Self.raw(server, pki: pki, pieces: [(bytes, 0)])
            #expect(Self.refused(outcome), "\(label): status \"\(outcome.status)\", closed \(outcome.closed), body \(outcome.body.prefix(120))")
        }
        #expect(try await server.accountCount() == 0, "nothing was written")
        let client = try FHIRClient(pki: pki, certificate: "valid", server: server)
        #expect(try await client.send(.GET, "/metadata").status == 200, "the server still serves")
        await client.shutdown()
        await server.stop()
    }

    /// The admin listener cuts a slow sender too (it had no receive timeout): a request whose
    /// headers never end is closed after `--request-timeout`.
    @Test func theAdminListenerCutsSlowSenders() async throws {
        let pki = try TestPKI()
        let server = try await RunningServer.start(pki: pki) { $0.requestReceiveTimeout = .seconds(1) }
        let script = """
            import socket, sys, time
            sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
            sock.sendall(b"GET /healthz HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n")
            # Far longer than the 1 s receive timeout and far shorter than the 120 s idle
            # one: the test process's event loops may lag by seconds on a loaded machine.
            sock.settimeout(60)
            start = time.time()
            try:
                closed = sock.recv(1024) == b""
            except socket.timeout:
                closed = False
            print("closed" if closed else "open", round(time.time() - start, 1))
            """
        let run = try await spawnAndWait("/usr/bin/python3", ["-c", script, "\(server.adminPort)"])
        let output = String(decoding: run.output, as: UTF8.self)
        #expect(output.hasPrefix("closed"), "\(output) \(String(decoding: run.errors, as: UTF8.self))")
        await server.stop()
    }

    /// The dedicated forward-auth listener cuts what the others cut (it had neither timeout):
    /// a request whose head never ends after `--request-timeout`, a connection that sends
    /// nothing after the idle timeout, TLS handshake included; a request that arrives whole is
    /// answered and its connection kept until it idles.
    @Test func theForwardAuthListenerCutsSlowAndIdleConnections() async throws {
        let script = #"""
            import select, socket, ssl, sys, time
            port, tls = int(sys.argv[1]), sys.argv[2] == "tls"
            def connect():
                sock = socket.create_connection(("127.0.0.1", port))
                if tls:
                    context = ssl.create_default_context()
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                    sock = context.wrap_socket(sock)
                sock.settimeout(60)
                return sock
            def closed(sock):
                start = time.time()
                try:
                    while True:
                        data = sock.recv(4096)
                        if not data:
                            return "closed %.1f" % (time.time() - start)
                except socket.timeout:
                    return "open"
                except (ConnectionResetError, ssl.SSLError):
                    return "closed %.1f" % (time.time() - start)
            # A head trickling in, a byte every 0.5 s for 6 s: the idle timeout (3 s) never
            # fires, so only the request timeout (1 s) can close it meanwhile.
            sock = connect()
            head = b"GET /forward-auth HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 40
            result = "head open"
            for i in range(12):
                try:
                    sock.sendall(head[i:i + 1])
                    ready, _, _ = select.select([sock], [], [], 0.5)
                    if ready and not sock.recv(4096):
                        result = "head closed"
                        break
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
                    result = "head closed"
                    break
            print(result)
            # Nothing at all, not even a TLS ClientHello (the idle timeout, 3 s).
            raw = socket.create_connection(("127.0.0.1", port))
            raw.settimeout(60)
            print("silent", closed(raw))
            # A whole request: answered, then the connection idles out.
            sock = connect()
            sock.sendall(b"GET /forward-auth HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Original-URI: /\r\n\r\n")
            answer = sock.recv(4096)
            print("answered", answer.split(b"\r\n")[0].decode(), closed(sock))
            """#
        for tls in [false, true] {
            let pki = try TestPKI()
            let server = try await RunningServer.start(pki: pki) {
                $0.requestReceiveTimeout = .seconds(1)
                $0.forwardAuth.idleTimeout = .seconds(3)
                $0.forwardAuth.tls = tls
            }
            let run = try await spawnAndWait("/usr/bin/python3", ["-c", script, "\(server.forwardAuthPort)", tls ? "tls" : "plain"])
            let lines = String(decoding: run.output, as: UTF8.self).split(separator: "\n").map(String.init)
            let errors = String(decoding: run.errors, as: UTF8.self)
            #expect(lines.count == 3, "tls \(tls): \(lines) \(errors)")
            #expect(lines.first?.hasPrefix("head closed") == true, "tls \(tls): \(lines)")
            #expect(lines.dropFirst().first?.hasPrefix("silent closed") == true, "tls \(tls): \(lines)")
            #expect(lines.last?.hasPrefix("answered HTTP/1.1 401 Unauthorized closed") == true, "tls \(tls): \(lines)")
            await server.stop()
        }
    }

    /// `--max-connections-per-client`: a client holding as many connections as allowed has a
    /// further one closed at once, before TLS, on the web and FHIR listeners; the ones it
    /// holds are kept; a place given back (a connection closed) is taken by the next; a
    /// refusal is counted and logged once; a trusted proxy is not counted. The admin
    /// listener is capped the same way.
    @Test func aClientHoldsAtMostItsConnections() async throws {
        // Which of the connections is refused depends on the order the event loops set them
        // up in, not the order they were opened: exactly one is, whichever it is.
        let script = #"""
            import select, socket, ssl, sys, time
            port, limit, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
            def state(sock, wait):
                sock.settimeout(wait)
                try:
                    return "closed" if sock.recv(1) == b"" else "data"
                except socket.timeout:
                    return "open"
                except (ConnectionResetError, OSError):
                    return "closed"
            socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(limit + 1)]
            closed = set()
            # Generous where a close is expected: the test process's event loops may lag on a
            # loaded machine.
            deadline = time.time() + (2 if mode == "proxy" else 30)
            while time.time() < deadline and not closed:
                ready, _, _ = select.select(socks, [], [], 0.25)
                closed |= {sock for sock in ready if state(sock, 0.1) == "closed"}
            kept = [sock for sock in socks if sock not in closed and state(sock, 0.5) == "open"]
            print("closed", len(closed), "open", len(kept))
            if mode == "web":
                # A place given back is the next connection's: a whole HTTPS request on it
                # (retried while the server has not seen the close yet).
                kept.pop().close()
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                answer = "none"
                for attempt in range(40):
                    try:
                        sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30))
                        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                        answer = sock.recv(4096).split(b"\r\n")[0].decode()
                        break
                    except (ConnectionResetError, ssl.SSLError, OSError):
                        time.sleep(0.25)
                print("freed", answer, "after", attempt, "refusal(s)")
            """#
        let pki = try TestPKI()
        let server = try await RunningServer.start(pki: pki) { $0.maxConnectionsPerClient = 3 }
        var retried = 0
        for (listener, port) in [("web", server.webPort), ("fhir", server.port), ("admin", server.adminPort)] {
            let run = try await spawnAndWait("/usr/bin/python3", ["-c", script, "\(port)", "3", listener])
            let lines = String(decoding: run.output, as: UTF8.self).split(separator: "\n").map(String.init)
            let errors = String(decoding: run.errors, as: UTF8.self)
            #expect(lines.first == "closed 1 open 3", "\(listener): \(lines) \(errors)")
            if listener == "web" {
                #expect(lines.last?.hasPrefix("freed HTTP/1.1 200 OK after ") == true, "\(lines) \(errors)")
                retried = lines.last?.split(separator: " ").dropLast().last.flatMap { Int($0) } ?? 0
            }
        }
        // The script's connections are all closed: every place is back, and the SAS is served.
        let client = try FHIRClient(pki: pki, certificate: "valid", server: server)
        #expect(try await client.send(.GET, "/metadata").status == 200)
        await client.shutdown()
        let metrics = try await AdminClient(server: server, token: "").send(.GET, "/metrics", authorization: "").body
        // A retry the server refused before it saw the freed place close counts too.
        #expect(metrics.contains(#"account_server_connections_refused_total{listener="web"} \#(1 + retried)"#)
                && metrics.contains(#"account_server_connections_refused_total{listener="fhir"} 1"#)
                && metrics.contains(#"account_server_connections_refused_total{listener="admin"} 1"#), "\(metrics.split(separator: "\n").filter { $0.contains("refused") })")
        #expect(server.logs.all.filter { $0.contains("connection refused: the client holds as many as allowed") }.count == 3, "one line per listener and minute")
        // A refused connection never began TLS: no handshake failure is logged for it (the
        // mutual-TLS listener logs those as warnings about the client's certificate). The
        // three held FHIR connections, closed by the script without a handshake, are.
        let handshakes = server.logs.all.filter { $0.contains("TLS handshake refused") }
        #expect(handshakes.count == 3, "\(handshakes)")
        await server.stop()

        // Behind a trusted proxy every browser arrives through the proxy's connections; a load
        // balancer that hides its clients is exempted on both listeners.
        for (label, setting) in [("--trusted-proxy", { (configuration: inout ServerConfiguration) in configuration.web.trustedProxies = ["127.0.0.1"] }),
                                 ("--connection-limit-exempt", { (configuration: inout ServerConfiguration) in configuration.connectionLimitExempt = ["127.0.0.0/8"] })] {
            let proxied = try await RunningServer.start(pki: pki) {
                $0.maxConnectionsPerClient = 3
                setting(&$0)
            }
            let ports = label == "--trusted-proxy" ? [proxied.webPort] : [proxied.webPort, proxied.port]
            for port in ports {
                let run = try await spawnAndWait("/usr/bin/python3", ["-c", script, "\(port)", "5", "proxy"])
                let lines = String(decoding: run.output, as: UTF8.self).split(separator: "\n").map(String.init)
                #expect(lines == ["closed 0 open 6"], "\(label), port \(port): \(lines) \(String(decoding: run.errors, as: UTF8.self))")
            }
            await proxied.stop()
        }
    }

    /// Slow senders are disconnected after `--request-timeout`, whether the headers or the
    /// body trickle in; a normal request on another connection is served meanwhile.
    @Test func slowSendersAreDisconnected() async throws {
        let pki = try TestPKI()
        let server = try await RunningServer.start(pki: pki) { $0.requestReceiveTimeout = .seconds(1) }
        let body = Array(Bodies.practitioner(national: "810002673899").utf8)
        let head = Self.request("POST /Practitioner HTTP/1.1\nHost: localhost\nContent-Type: application/fhir+json\nContent-Length: \(body.count)\n\n")
        let slowHeaders = try await Self.raw(server, pki: pki, pieces: head.chunked(into: 8).map { ($0, 0.2) })
        #expect(slowHeaders.closed && slowHeaders.status.isEmpty, "headers trickling in: \(slowHeaders)")
        #expect(slowHeaders.elapsed < 20, "well before the 120 s idle timeout: \(slowHeaders)")
        #expect(try await server.accountCount() == 0, "after slow headers")
        let slowBody = try await Self.raw(server, pki: pki, pieces: [(head, 0)] + body.chunked(into: 16).map { ($0, 0.2) })
        #expect(slowBody.closed && slowBody.status.isEmpty, "body trickling in: \(slowBody)")
        #expect(try await server.accountCount() == 0, "after a slow body")
        let truncated = try await Self.raw(server, pki: pki, pieces: [(head + body.dropLast(20), 0)])
        #expect(truncated.closed && truncated.status.isEmpty && truncated.elapsed < 20, "a body shorter than declared: \(truncated)")
        #expect(try await server.accountCount() == 0, "after a truncated body")

        // The timeout does not cut a connection that is merely idle between requests, nor a
        // request that arrives whole.
        let client = try FHIRClient(pki: pki, certificate: "valid", server: server)
        #expect(try await client.send(.GET, "/metadata").status == 200)
        try await Task.sleep(for: .seconds(2))
        let created = try await client.send(.POST, "/Practitioner", body: String(decoding: body, as: UTF8.self))
        #expect(created.status == 201, "\(created.status) \(created.body)")
        #expect(try await server.accountCount() == 1)
        #expect(server.logs.all.filter { $0.contains("request not received in time") }.count == 3, "one line per connection cut")
        await client.shutdown()
        await server.stop()
    }
}

extension Array {
    func chunked(into size: Int) -> [[Element]] {
        stride(from: 0, to: count, by: size).map { Array(self[$0..<Swift.min($0 + size, count)]) }
    }
}
