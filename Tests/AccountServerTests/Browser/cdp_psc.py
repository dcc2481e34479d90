#!/usr/bin/env python3
"""Drives headless Chromium through the Pro Santé Connect journey over the DevTools protocol.

Usage: cdp_psc.py ENTRY_URL LOGIN
Opens ENTRY_URL (the SAS redirect), expects the provider's login form, signs in as LOGIN (the
test provider's password is the login), accepts the CGU, and reads "Mon compte". Then drops
this server's session cookie only and opens ENTRY_URL again: with the provider's session
live, it must come back signed in without any form. Prints one JSON object describing what
it saw. Exit code 0 when the script ran to the end, whatever it found.
"""
import json, os, sys, time
from urllib.parse import urlparse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cdp import Chromium

entry, login = sys.argv[1:3]
ours = urlparse(entry)
browser = Chromium()
call, evaluate, wait_for = browser.call, browser.evaluate, browser.wait_for
try:
    call("Page.enable")
    call("Network.enable")
    call("Page.navigate", {"url": entry})
    wait_for("/oauth2/authorize", "#lform")
    provider_origin = evaluate("location.origin")
    evaluate(f"document.querySelector('#userfield').value = {json.dumps(login)};"
             f"document.querySelector('#passwordfield').value = {json.dumps(login)};"
             "document.querySelector('#lform').submit(); true")
    wait_for("/connexion/cgu", "#accepte")
    cgu_origin = evaluate("location.origin")
    evaluate("document.querySelector('#accepte').checked = true; document.querySelector('#form-cgu button').click(); true")
    wait_for("/compte", "#habilitation")
    first = {
        "habilitation": evaluate("document.querySelector('#habilitation').dataset.habilitation"),
        "origine": evaluate("document.querySelector('#origine').dataset.origine"),
        "nom": evaluate("document.querySelector('#nom').textContent"),
        "lang": evaluate("document.documentElement.lang"),
        "session_cookie_visible_to_script": evaluate("document.cookie.includes('as-session')"),
    }
    # Our session only is dropped; the provider's stays: the SAS link signs in silently.
    call("Network.deleteCookies", {"name": "__Host-as-session", "url": f"{ours.scheme}://{ours.netloc}/"})
    call("Page.navigate", {"url": entry})
    wait_for("/compte", "#habilitation")
    print(json.dumps({
        "provider_login_form": True,
        "provider_origin": provider_origin,
        "cgu_origin": cgu_origin,
        "first": first,
        "second_habilitation": evaluate("document.querySelector('#habilitation').dataset.habilitation"),
        "second_path": evaluate("location.pathname"),
    }))
finally:
    browser.close()
