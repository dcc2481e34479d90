#!/usr/bin/env python3
"""Drives headless Chromium through the regulator sign-in over the DevTools protocol.

Usage: cdp_sign_in.py ENTRY_URL EMAIL PASSWORD
Starts at ENTRY_URL (the SAS redirect), signs in, enrols TOTP (secret read from the page),
continues past the recovery codes, accepts the CGU, and prints one JSON object describing the
final page's DOM. Exit code 0 when the script ran to the end, whatever it found.
"""
import base64, hashlib, hmac, json, os, shutil, socket, struct, subprocess, sys, tempfile, time, urllib.request

import websocket

entry, email, password = sys.argv[1:4]
profile = tempfile.mkdtemp(prefix="chromium-")
with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
chromium = subprocess.Popen(
    ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--ignore-certificate-errors",
     "--no-first-run", f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "about:blank"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    deadline = time.time() + 30
    target = None
    while time.time() < deadline and target is None:
        try:
            pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=1))
            target = next(p for p in pages if p.get("type") == "page")
        except Exception:
            time.sleep(0.2)
    ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=30)
    counter = [0]

    def call(method, params=None):
        counter[0] += 1
        ws.send(json.dumps({"id": counter[0], "method": method, "params": params or {}}))
        while True:
            message = json.loads(ws.recv())
            if message.get("id") == counter[0]:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(expression):
        result = call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        return result.get("result", {}).get("value")

    def wait_for(path, selector, timeout=20):
        end = time.time() + timeout
        while time.time() < end:
            state = evaluate(f"[location.pathname, document.readyState, !!document.querySelector({json.dumps(selector)})]")
            if state and state[0] == path and state[1] == "complete" and state[2]:
                return
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {path} {selector}: at {evaluate('location.href')}")

    def totp(secret_base32, step_offset=0):
        key = base64.b32decode(secret_base32.replace(" ", ""))
        counter_bytes = struct.pack(">Q", int(time.time()) // 30 + step_offset)
        digest = hmac.new(key, counter_bytes, hashlib.sha1).digest()
        offset = digest[-1] & 0x0F
        value = (struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF) % 1_000_000
        return f"{value:06d}"

    call("Page.enable")
    call("Page.navigate", {"url": entry})
    wait_for("/connexion", "#form-connexion")
    sas_banner = evaluate("!!document.querySelector('#origine-sas')")
    evaluate(f"document.querySelector('#email').value = {json.dumps(email)};"
             f"document.querySelector('#password').value = {json.dumps(password)};"
             "document.querySelector('#form-connexion button').click(); true")
    wait_for("/connexion/totp", "#cle-secrete")
    qr = evaluate("!!document.querySelector('#qr-code svg')")
    secret = evaluate("document.querySelector('#cle-secrete').textContent")
    evaluate(f"document.querySelector('#code').value = {json.dumps(totp(secret))};"
             "document.querySelector('#form-totp button').click(); true")
    wait_for("/connexion/totp", "#codes-secours")
    recovery_codes = evaluate("document.querySelectorAll('#codes-secours li').length")
    evaluate("document.querySelector('#form-suite button').click(); true")
    wait_for("/connexion/cgu", "#accepte")
    evaluate("document.querySelector('#accepte').checked = true; document.querySelector('#form-cgu button').click(); true")
    wait_for("/compte", "#habilitation")
    print(json.dumps({
        "sas_banner": sas_banner,
        "qr_code": qr,
        "recovery_codes": recovery_codes,
        "path": evaluate("location.pathname"),
        "habilitation": evaluate("document.querySelector('#habilitation').dataset.habilitation"),
        "origine": evaluate("document.querySelector('#origine').dataset.origine"),
        "nom": evaluate("document.querySelector('#nom').textContent"),
        "lang": evaluate("document.documentElement.lang"),
        "session_cookie_visible_to_script": evaluate("document.cookie.includes('as-session')"),
    }))
finally:
    chromium.terminate()
    try:
        chromium.wait(timeout=10)
    except Exception:
        chromium.kill()
    shutil.rmtree(profile, ignore_errors=True)
