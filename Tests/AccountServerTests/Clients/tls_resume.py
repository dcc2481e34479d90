#!/usr/bin/env python3
"""A mutual-TLS client that really resumes its TLS session, as Java's and curl's do.

Usage: tls_resume.py HOST PORT CA CERT KEY VERSION(1.2|1.3) GO_FILE

Step 1: a full handshake, GET /metadata (Connection: keep-alive), the answer's status
        printed as a JSON line; the session (id or ticket) is kept, the connection too.
Then it waits until GO_FILE exists (the test revokes the certificate, or not, meanwhile).
Step 2: on the kept-alive connection, GET /metadata again: JSON line.
Step 3: a new connection resuming the session, GET /metadata: JSON line with
        session_reused (the test asserts the resumption really happened).
"""
import json, os, socket, ssl, sys, time

from raw_http import read_answers

host, port, ca, cert, key, version, go = sys.argv[1], int(sys.argv[2]), *sys.argv[3:8]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(ca)
ctx.load_cert_chain(cert, key)
ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3


def get(conn, close):
    conn.sendall(b"GET /metadata HTTP/1.1\r\nHost: localhost\r\nAccept: application/fhir+json\r\nConnection: "
                 + (b"close" if close else b"keep-alive") + b"\r\n\r\n")
    data, _ = read_answers(conn, 1, settle=None)
    if not data.startswith(b"HTTP/1.1 "):
        return "closed"
    return data.split(b" ", 2)[1].decode()


def attempt(step, conn, close):
    try:
        status = get(conn, close)
    except (ssl.SSLError, OSError) as error:
        status = "closed"
    return status


first = ctx.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname="localhost")
print(json.dumps({"step": 1, "status": attempt(1, first, False), "reused": first.session_reused}), flush=True)
session = first.session  # TLS 1.3: the tickets arrived with the answer
deadline = time.time() + 60
while not os.path.exists(go) and time.time() < deadline:
    time.sleep(0.05)
print(json.dumps({"step": 2, "status": attempt(2, first, True)}), flush=True)
first.close()
try:
    resumed = ctx.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname="localhost", session=session)
    status = attempt(3, resumed, True)
    print(json.dumps({"step": 3, "status": status, "reused": resumed.session_reused}), flush=True)
except (ssl.SSLError, OSError) as error:
    print(json.dumps({"step": 3, "status": "handshake-failed", "reused": False, "error": str(error)}), flush=True)
