#!/usr/bin/env python3
"""Drives headless Chromium through the regulator sign-in over the DevTools protocol.

Usage: cdp_sign_in.py ENTRY_URL EMAIL PASSWORD [FINAL_PATH FINAL_SELECTOR]
Starts at ENTRY_URL (the SAS redirect), signs in, enrols TOTP (secret read from the page),
continues past the recovery codes, accepts the CGU, waits for FINAL_PATH showing
FINAL_SELECTOR (default: /compte, #habilitation), and prints one JSON object describing the
final page's DOM. Exit code 0 when the script ran to the end, whatever it found.
"""
import base64, hashlib, hmac, json, os, struct, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cdp import Chromium

entry, email, password = sys.argv[1:4]
final_path, final_selector = (sys.argv[4:6] if len(sys.argv) >= 6 else ["/compte", "#habilitation"])
browser = Chromium()
call, evaluate, wait_for = browser.call, browser.evaluate, browser.wait_for
try:
    def totp(secret_base32, step_offset=0):
        key = base64.b32decode(secret_base32.replace(" ", ""))
        counter_bytes = struct.pack(">Q", int(time.time()) // 30 + step_offset)
        digest = hmac.new(key, counter_bytes, hashlib.sha1).digest()
        offset = digest[-1] & 0x0F
        value = (struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF) % 1_000_000
        return f"{value:06d}"

    # A phone's width (WCAG 1.4.10: content reflows at 320 CSS pixels, no horizontal scroll).
    call("Emulation.setDeviceMetricsOverride", {"width": 320, "height": 640, "deviceScaleFactor": 1, "mobile": False})
    too_wide = []
    def check_width():
        width = evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        if width[0] > width[1]:
            too_wide.append([evaluate("location.pathname"), width[0]])
    call("Page.enable")
    call("Page.navigate", {"url": entry})
    wait_for("/connexion", "#form-connexion")
    check_width()
    sas_banner = evaluate("!!document.querySelector('#origine-sas')")
    evaluate(f"document.querySelector('#email').value = {json.dumps(email)};"
             f"document.querySelector('#password').value = {json.dumps(password)};"
             "document.querySelector('#form-connexion button').click(); true")
    wait_for("/connexion/totp", "#cle-secrete")
    check_width()
    qr = evaluate("!!document.querySelector('#qr-code svg')")
    secret = evaluate("document.querySelector('#cle-secrete').textContent")
    # « Activer », then what a second click would do while the first answer is on its way:
    # another submit event, which the pages' script (loaded under their CSP) cancels.
    second_submit_blocked = evaluate(
        f"document.querySelector('#code').value = {json.dumps(totp(secret))};"
        "(() => { const form = document.querySelector('#form-totp'); form.querySelector('button').click();"
        " const again = new SubmitEvent('submit', {bubbles: true, cancelable: true}); form.dispatchEvent(again);"
        " return again.defaultPrevented; })()")
    wait_for("/connexion/totp", "#codes-secours")
    check_width()
    recovery_codes = evaluate("document.querySelectorAll('#codes-secours li').length")
    evaluate("document.querySelector('#form-suite button').click(); true")
    wait_for("/connexion/cgu", "#accepte")
    check_width()
    evaluate("document.querySelector('#accepte').checked = true; document.querySelector('#form-cgu button').click(); true")
    wait_for(final_path, final_selector)
    check_width()
    # A hospital's long address, as the account page shows it, still wraps.
    if evaluate("!!document.querySelector('#email')"):
        evaluate("document.querySelector('#email').textContent = 'jean-baptiste.delacroixdemontmorency@chuexemplemetropolesud.fr'; true")
        check_width()
    def data(selector, attribute):
        return evaluate(f"(document.querySelector({json.dumps(selector)}) || {{dataset: {{}}}}).dataset.{attribute} || null")
    print(json.dumps({
        "origin": evaluate("location.origin"),
        "sas_banner": sas_banner,
        "qr_code": qr,
        "recovery_codes": recovery_codes,
        "second_submit_blocked": second_submit_blocked,
        "path": evaluate("location.pathname"),
        "habilitation": data("#habilitation", "habilitation"),
        "origine": data("#origine", "origine"),
        "nom": evaluate("(document.querySelector('#nom') || {}).textContent || null"),
        "lang": evaluate("document.documentElement.lang"),
        "session_cookie_visible_to_script": evaluate("document.cookie.includes('as-session')"),
        "sessions": evaluate("document.querySelectorAll('#sessions li').length"),
        "current_session": data("#sessions li", "courante"),
        "session_text": evaluate("(document.querySelector('#sessions li') || {}).textContent || null"),
        "too_wide_at_320": too_wide,
    }))
finally:
    browser.close()
