#!/usr/bin/env python3
"""Connections per second on the mutual-TLS FHIR listener, with and without TLS session
resumption: each connection does a handshake (full, or resuming the previous connection's
session), one GET /metadata, and closes. Interleaved rounds, one client, so the two modes
are measured on the same machine state.

Usage: tls-resumption-bench.py HOST PORT CA CERT KEY [--seconds S] [--rounds N] [--server-pid PID]
Prints one line per TLS version and mode: connections/s (median of rounds), p50 ms, the share
of connections that really resumed, and with --server-pid the server's CPU time per
connection (user + system, from /proc: steadier than rates on a shared machine).
"""
import argparse, os, socket, ssl, statistics, time

parser = argparse.ArgumentParser()
parser.add_argument("host"); parser.add_argument("port", type=int)
parser.add_argument("ca"); parser.add_argument("cert"); parser.add_argument("key")
parser.add_argument("--seconds", type=float, default=4); parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--server-pid", type=int)
args = parser.parse_args()


def context(version):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


def one(ctx, session):
    started = time.perf_counter()
    raw = socket.create_connection((args.host, args.port), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as curl and Java clients do
    conn = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    conn.sendall(b"GET /metadata HTTP/1.1\r\nHost: localhost\r\nAccept: application/fhir+json\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    ok = data.startswith(b"HTTP/1.1 200")
    reused = conn.session_reused
    session = conn.session
    conn.close()
    return time.perf_counter() - started, ok, reused, session


def server_cpu():
    if not args.server_pid:
        return 0.0
    fields = open(f"/proc/{args.server_pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def round_(ctx, reuse):
    cpu_before = server_cpu()
    session, count, reused, errors, latencies = None, 0, 0, 0, []
    deadline = time.perf_counter() + args.seconds
    while time.perf_counter() < deadline:
        elapsed, ok, was_reused, new_session = one(ctx, session if reuse else None)
        if reuse:
            session = new_session
        count += 1
        reused += was_reused
        errors += not ok
        latencies.append(elapsed)
    cpu = (server_cpu() - cpu_before) * 1000 / max(count, 1)
    return count / args.seconds, statistics.median(latencies) * 1000, reused / max(count, 1), errors, cpu


for name, version in (("TLS 1.2", ssl.TLSVersion.TLSv1_2), ("TLS 1.3", ssl.TLSVersion.TLSv1_3)):
    ctx = context(version)
    results = {"full handshake": [], "resumed": []}
    for _ in range(args.rounds):
        for mode, reuse in (("full handshake", False), ("resumed", True)):
            results[mode].append(round_(ctx, reuse))
    for mode, rows in results.items():
        rate = statistics.median(r[0] for r in rows)
        p50 = statistics.median(r[1] for r in rows)
        share = statistics.median(r[2] for r in rows)
        errors = sum(r[3] for r in rows)
        cpu = statistics.median(r[4] for r in rows)
        line = f"{name:8} {mode:15} {rate:8.0f} conn/s   p50 {p50:6.2f} ms   resumed {share:6.1%}   errors {errors}"
        if args.server_pid:
            line += f"   server CPU {cpu:5.2f} ms/conn"
        print(line)
