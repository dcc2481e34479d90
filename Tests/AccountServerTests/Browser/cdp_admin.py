#!/usr/bin/env python3
"""Drives headless Chromium through the vendor admin page over the DevTools protocol.

Usage: cdp_admin.py ADMIN_URL TOKEN QUERY
Signs in by typing the admin token into the page's sign-in form, searches QUERY, withdraws
the first result's habilitation with one click (a reason typed first), and prints one JSON
object describing the page before and after. Exit code 0 when the script ran to the end.
"""
import base64, json, os, sys

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
    print(json.dumps({
        "before": before,
        "message": browser.evaluate("document.querySelector('#message').textContent"),
        "suspended_shown": browser.evaluate("!!document.querySelector('[data-suspendu=oui]')"),
        "restore_button": browser.evaluate("!!document.querySelector('[id^=retablir-]')"),
        "query_kept": browser.evaluate("document.querySelector('#q').value"),
    }))
finally:
    browser.close()
