#!/usr/bin/env python3
"""Benchmark of the Pro Santé Connect callback (GET /connexion/psc/retour).

Starts the release account-server with --oidc-issuer pointing at a local LemonLDAP::NG
provider (the test suite's Tests/AccountServerTests/Provider/llng.py, PSC-shaped), creates a
regulator over mTLS, signs in once at the provider (CGU accepted), then repeats the SAS
journey with the provider's session live (silent SSO): entry → /connexion/psc → provider
authorize (302, no prompt) → our callback. For every callback the server logs its own time and
the time spent waiting for the provider (code exchange, userinfo; keys are cached), measured
inside the handler; this script reads them from the JSON log and also times the callback from
the client side.

Usage: scripts/sso-bench.py [--iterations N] [--build release|debug]
Prints one table. Needs scripts/install-deps.sh (LemonLDAP::NG, starman).
"""
import argparse, json, os, re, shutil, socket, statistics, subprocess, sys, tempfile, time
import urllib.parse as up

import requests
import urllib3

urllib3.disable_warnings()
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--iterations", type=int, default=300)
ap.add_argument("--build", default="release")
args = ap.parse_args()

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def wait_port(port, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"port {port} never opened")

def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]

subprocess.run(["swift", "build", "-c", args.build, "--product", "account-server"], cwd=root, check=True, stdout=subprocess.DEVNULL)
binary = subprocess.run(["swift", "build", "-c", args.build, "--show-bin-path"], cwd=root, check=True, capture_output=True, text=True).stdout.strip() + "/account-server"
work = tempfile.mkdtemp(prefix="sso-bench-")
fhir, web, admin, fa, psc = (free_port() for _ in range(5))
public = f"https://localhost:{web}"
issuer = f"https://127.0.0.1:{psc}"
secret = "bench-client-secret"
# 0600: the server refuses a client secret others could read.
with os.fdopen(os.open(f"{work}/client-secret", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as secret_file:
    secret_file.write(secret + "\n")
log = open(f"{work}/server.log", "w")
server = subprocess.Popen([binary, "serve", "--database", f"{work}/db.sqlite", "--secret-key-file", f"{work}/secret.key",
                           "--admin-token-file", f"{work}/admin.token", "--dev-pki", f"{work}/pki",
                           "--fhir-address", f"127.0.0.1:{fhir}", "--web-address", f"127.0.0.1:{web}",
                           "--admin-address", f"127.0.0.1:{admin}", "--forward-auth-address", f"127.0.0.1:{fa}",
                           "--public-url", public, "--allowed-return-host", "localhost", "--rate-limit-per-minute", "100000",
                           "--oidc-issuer", issuer, "--oidc-client-id", "account-server", "--oidc-client-secret-file", f"{work}/client-secret",
                           "--oidc-ca", f"{work}/pki/ca.pem", "--log-format", "json"], cwd=work, stdout=subprocess.DEVNULL, stderr=log)
provider = None
try:
    wait_port(web)
    pki = f"{work}/pki"
    json.dump([{"id": "account-server", "secret": secret, "redirect": public + "/connexion/psc/retour",
                "post_logout": public + "/deconnexion/terminee", "backchannel": public + "/connexion/psc/backchannel-logout"}],
              open(f"{work}/clients.json", "w"))
    json.dump({"dwho": {"SubjectNameID": "810002673899", "given_name": "Jules", "family_name": "Marius"}}, open(f"{work}/users.json", "w"))
    provider = subprocess.Popen([sys.executable, f"{root}/Tests/AccountServerTests/Provider/llng.py", "--dir", f"{work}/llng", "--port", str(psc),
                                 "--cert", f"{pki}/server.pem", "--key", f"{pki}/server-key.pem", "--clients", f"{work}/clients.json",
                                 "--users", f"{work}/users.json"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_port(psc)
    ca = f"{pki}/ca.pem"
    body = ('{"resourceType":"Practitioner","meta":{"source":"urn:oid:1.2.250.1.213.3.6"},"identifier":[{"type":{"coding":'
            '[{"system":"http://interopsante.org/fhir/CodeSystem/fr-v2-0203","code":"IDNPS"}]},"system":"urn:oid:1.2.250.1.71.4.2.1",'
            '"value":"810002673899"}],"active":true,"name":[{"family":"MARIUS","given":["Jules"]}],"telecom":[{"system":"email","value":"jules.marius@example.fr"}]}')
    created = requests.post(f"https://localhost:{fhir}/Practitioner", data=body, headers={"Content-Type": "application/fhir+json"},
                            cert=(f"{pki}/sas-client.pem", f"{pki}/sas-client-key.pem"), verify=ca)
    assert created.status_code == 201, created.text
    for _ in range(100):
        try:
            if requests.get(issuer + "/.well-known/openid-configuration", verify=ca).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.1)

    s = requests.Session()
    def get(url):
        return s.get(url if url.startswith("http") else public + url, allow_redirects=False, verify=ca)
    entry = "/connexion?origin=sas&retour=" + up.quote(public + "/compte?origin=sas", safe="")

    def journey(first=False):
        # Our cookies go (a new browser tab after the session ended); the provider's stay.
        for cookie in list(s.cookies):
            if not cookie.domain.startswith("127.0.0.1"):
                s.cookies.clear(cookie.domain, cookie.path, cookie.name)
        r = get(entry); assert r.status_code == 303 and r.headers["location"] == "/connexion/psc", (r.status_code, r.text[:200])
        r = get("/connexion/psc"); authorize = r.headers["location"]
        r = get(authorize)
        if first:
            hidden = dict(re.findall(r'<input[^>]*type="hidden"[^>]*name="([^"]*)"[^>]*value="([^"]*)"', r.text))
            r = s.post(authorize, data=dict(hidden, user="dwho", password="dwho"), allow_redirects=False, verify=ca)
        assert r.status_code == 302, (r.status_code, r.text[:300])
        callback = r.headers["location"]
        start = time.perf_counter()
        r = get(callback)
        elapsed = (time.perf_counter() - start) * 1000
        if first and r.headers.get("location") == "/connexion/cgu":
            page = get("/connexion/cgu").text
            token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
            version = re.search(r'name="version" value="([^"]+)"', page).group(1)
            r = s.post(public + "/connexion/cgu", data={"csrf": token, "version": version, "accepte": "oui"}, allow_redirects=False, verify=ca)
        assert r.status_code == 303 and "/compte" in r.headers["location"], (r.status_code, r.text[:300])
        return elapsed

    journey(first=True)
    for _ in range(20):
        journey()  # warm-up
    log.flush()
    skip = len(open(f"{work}/server.log").read().splitlines())
    client_ms = [journey() for _ in range(args.iterations)]
    time.sleep(0.5)
    own, waited = [], []
    for line in open(f"{work}/server.log").read().splitlines()[skip:]:
        if "provider sign-in accepted" in line:
            own.append(float(re.search(r'"own_ms":"([0-9.]+)"', line).group(1)))
            waited.append(float(re.search(r'"provider_ms":"([0-9.]+)"', line).group(1)))
    assert len(own) == args.iterations, (len(own), args.iterations)
    print(f"Pro Santé Connect callback, {args.iterations} silent-SSO sign-ins ({args.build} build), milliseconds")
    print(f"{'':38} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}")
    for name, values in [("own share (server, excl. provider)", own), ("provider round trips (token, userinfo)", waited),
                         ("callback as the browser sees it", client_ms)]:
        print(f"{name:38} {pct(values, 50):8.2f} {pct(values, 95):8.2f} {pct(values, 99):8.2f} {max(values):8.2f}")
    print(f"target: own share p95 <= 5 ms -> {'met' if pct(own, 95) <= 5 else 'NOT met'}")
finally:
    if provider:
        os.killpg(provider.pid, 9)
    server.terminate()
    server.wait(timeout=20)
    shutil.rmtree(work, ignore_errors=True)
