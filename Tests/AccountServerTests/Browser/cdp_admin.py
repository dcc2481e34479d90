#!/usr/bin/env python3
"""Drives headless Chromium through the vendor admin page over the DevTools protocol.

Usage: cdp_admin.py ADMIN_URL TOKEN QUERY
Signs in by typing the admin token into the page's sign-in form, searches QUERY, withdraws
the first result's habilitation with one click (a reason typed first), reloads the page,
then opens the page's address without its token (the session cookie alone), and prints one
JSON object describing the page before and after. Exit code 0 when the script ran to the end.
"""
import base64, json, os, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cdp import Chromium

admin, token, query = sys.argv[1:4]
browser = Chromium()
try:
    browser.call("Page.enable")
    browser.call("Network.enable")
    browser.call("Page.navigate", {"url": admin + "/"})
    browser.wait_for("/", "#form-connexion")
    browser.evaluate(f"document.querySelector('#jeton').value = {json.dumps(token)}; document.querySelector('#form-connexion button').click(); true")
    browser.wait_for("/", "#form-recherche")
    browser.evaluate(f"document.querySelector('#q').value = {json.dumps(query)}; document.querySelector('#form-recherche button').click(); true")
    browser.wait_for("/", "#resultats")
    before = {
        "rows": browser.evaluate("document.querySelectorAll('#resultats tbody tr').length"),
        "withdraw_button": browser.evaluate("!!document.querySelector('[id^=retirer-]')"),
        "lang": browser.evaluate("document.documentElement.lang"),
        "title": browser.evaluate("document.querySelector('h1').textContent"),
    }
    browser.evaluate("document.querySelector('[id^=motif-]').value = 'Départ du service';"
                     "document.querySelector('[id^=retirer-]').click(); true")
    browser.wait_for("/", "#message")
    after = {
        "before": before,
        "message": browser.evaluate("document.querySelector('#message').textContent"),
        "suspended_shown": browser.evaluate("!!document.querySelector('[data-suspendu=oui]')"),
        "restore_button": browser.evaluate("!!document.querySelector('[id^=retablir-]')"),
        "query_kept": browser.evaluate("document.querySelector('#q').value"),
        "token_in_address": browser.evaluate("new URLSearchParams(location.search).has('csrf')"),
    }
    # A reload keeps the page (its address carries the session's token)...
    browser.evaluate("window.beforeReload = true")
    browser.call("Page.reload")
    end = time.time() + 20
    while not browser.evaluate("window.beforeReload === undefined && document.readyState === 'complete' && !!document.querySelector('#resultats')"):
        if time.time() > end:
            raise RuntimeError("timed out waiting for the reloaded page")
        time.sleep(0.1)
    after["reload_kept_the_page"] = True
    # ...and the address without it, the session cookie alone, gets the sign-in form.
    browser.call("Page.navigate", {"url": admin + "/?q=" + query})
    browser.wait_for("/", "#form-connexion")
    after["cookie_alone"] = "sign-in form"
    print(json.dumps(after))
finally:
    browser.close()
