#!/usr/bin/env python3
"""Runs LemonLDAP::NG (Debian's package) as a local OpenID Connect provider shaped like
Pro Santé Connect, for the test suite: no system service, everything in one folder, served by
starman over https on loopback.

  llng.py --dir D --port P --cert C --key K --clients clients.json --users users.json

clients.json: [{"id", "secret", "redirect", "post_logout", "backchannel"}]
users.json:   {"login": {"SubjectNameID", "given_name", "family_name"}}  (password = login,
              LemonLDAP::NG's Demo backend; its logins are dwho, rtyler and msmith)

The PSC shape: scope `scope_all` releases SubjectNameID, given_name and family_name; the ID
token's `acr` is `eidas1` (authentication level 1); PKCE is required; back-channel logout is
added by the plugin beside this file (LemonLDAP::NG 2.16 leaves it as a TODO). The provider's
signing key is new at each start, like a provider rotating its keys.
"""
import argparse, json, os, subprocess, sys, time

ap = argparse.ArgumentParser()
ap.add_argument("--dir", required=True)
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--cert", required=True)
ap.add_argument("--key", required=True)
ap.add_argument("--clients", required=True)
ap.add_argument("--users", required=True)
ap.add_argument("--acr-level", type=int, default=2, help="authentication level that maps to eidas1 (the Demo sign-in gives 2)")
args = ap.parse_args()

here = os.path.dirname(os.path.abspath(__file__))
d = os.path.abspath(args.dir)
for sub in ("conf", "sessions", "sessions/lock", "psessions", "psessions/lock", "cache"):
    os.makedirs(os.path.join(d, sub), exist_ok=True)

def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

key_path = os.path.join(d, "oidc-sig.key")
run("openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key_path)
private_pem = open(key_path).read()
public_pem = run("openssl", "pkey", "-in", key_path, "-pubout")

clients = json.load(open(args.clients))
users = json.load(open(args.users))
portal = f"https://127.0.0.1:{args.port}/"

def perl_string(s):
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"

# Macros computed at sign-in from the Demo login: the PSC attributes of each test user.
macros = {}
for attr in ("SubjectNameID", "given_name", "family_name"):
    expr = "''"
    for login, values in users.items():
        expr = f"($uid eq {perl_string(login)} ? {perl_string(values.get(attr, ''))} : {expr})"
    macros[attr] = expr

rp_options, rp_vars, rp_claims = {}, {}, {}
for c in clients:
    name = c["id"]
    rp_options[name] = {
        "oidcRPMetaDataOptionsClientID": c["id"],
        "oidcRPMetaDataOptionsClientSecret": c["secret"],
        "oidcRPMetaDataOptionsRedirectUris": c["redirect"],
        "oidcRPMetaDataOptionsPostLogoutRedirectUris": c.get("post_logout", ""),
        "oidcRPMetaDataOptionsLogoutUrl": c.get("backchannel", ""),
        "oidcRPMetaDataOptionsLogoutType": "back",
        "oidcRPMetaDataOptionsLogoutSessionRequired": 1,
        "oidcRPMetaDataOptionsLogoutBypassConfirm": 1,
        "oidcRPMetaDataOptionsIDTokenSignAlg": "RS256",
        "oidcRPMetaDataOptionsUserInfoSignAlg": c.get("userinfo_alg", ""),
        "oidcRPMetaDataOptionsRequirePKCE": 1,
        "oidcRPMetaDataOptionsBypassConsent": 1,
        "oidcRPMetaDataOptionsIDTokenExpiration": 300,
        "oidcRPMetaDataOptionsAccessTokenExpiration": 300,
        "oidcRPMetaDataOptionsAuthorizationCodeExpiration": 60,
        "oidcRPMetaDataOptionsUserIDAttr": "uid",
        "oidcRPMetaDataOptionsPublic": 0,
    }
    rp_vars[name] = {"SubjectNameID": "SubjectNameID", "given_name": "given_name", "family_name": "family_name"}
    rp_claims[name] = {"scope_all": "SubjectNameID given_name family_name"}

sessions = lambda sub: {"Directory": os.path.join(d, sub), "LockDirectory": os.path.join(d, sub, "lock")}
conf = {
    "cfgNum": 1, "cfgAuthor": "account-server tests", "cfgDate": int(time.time()), "cfgVersion": "2.16.1",
    "portal": portal, "domain": "127.0.0.1", "cookieName": "llngpsc", "securedCookie": 1, "httpOnly": 1,
    "sameSite": "Lax", "trustedDomains": "", "logLevel": os.environ.get("LLNG_LOG", "warn"),
    "authentication": "Demo", "userDB": "Same", "passwordDB": "Demo", "registerDB": "Null",
    "demoExportedVars": {"cn": "cn", "mail": "mail", "uid": "uid"},
    "exportedVars": {"UA": "HTTP_USER_AGENT"},
    "locationRules": {"127.0.0.1": {"default": "accept"}}, "exportedHeaders": {"127.0.0.1": {}},
    "macros": macros,
    "globalStorage": "Apache::Session::File", "globalStorageOptions": sessions("sessions"),
    "persistentStorage": "Apache::Session::File", "persistentStorageOptions": sessions("psessions"),
    "localSessionStorage": "Cache::FileCache",
    "localSessionStorageOptions": {"cache_root": os.path.join(d, "cache"), "namespace": "llng", "default_expires_in": 600, "directory_umask": "007", "cache_depth": 3},
    "issuerDBOpenIDConnectActivation": 1, "issuerDBOpenIDConnectPath": "^/oauth2/", "issuerDBOpenIDConnectRule": 1,
    "oidcServiceMetaDataIssuer": portal.rstrip("/"),
    "oidcServicePrivateKeySig": private_pem, "oidcServicePublicKeySig": public_pem,
    "oidcServiceKeyIdSig": "psc-" + os.urandom(4).hex(), "oidcServiceKeyTypeSig": "RSA",
    "oidcServiceAllowAuthorizationCodeFlow": 1, "oidcServiceAllowImplicitFlow": 0, "oidcServiceAllowHybridFlow": 0,
    "oidcServiceMetaDataAuthnContext": {"eidas1": args.acr_level, "eidas2": args.acr_level + 1},
    "oidcRPMetaDataOptions": rp_options, "oidcRPMetaDataExportedVars": rp_vars,
    "oidcRPMetaDataOptionsExtraClaims": rp_claims,
    "customPlugins": "AccountServerTests::HostOnlyCookie, AccountServerTests::BackChannelLogout",
    "notification": 0, "captcha_mail_enabled": 0, "captcha_register_enabled": 0, "captcha_login_enabled": 0, "captcha": "AccountServerTests::NoCaptcha", "portalDisplayLogout": 1, "checkXSS": 1, "requireToken": 0,
    "loginHistoryEnabled": 0, "portalCheckLogins": 0, "stayConnected": 0,
    "singleSession": 0, "browsersDontStorePassword": 1, "timeout": 7200, "timeoutActivity": 0,
    "whatToTrace": "uid", "hiddenAttributes": "_password", "userControl": "^[\\w\\.\\-@]+$",
}
json.dump(conf, open(os.path.join(d, "conf", "lmConf-1.json"), "w"), indent=1)
ini = f"""[all]
logLevel = {conf['logLevel']}
[configuration]
type = File
dirName = {os.path.join(d, 'conf')}
localStorage = Cache::FileCache
localStorageOptions = {{ 'namespace' => 'llng-config', 'default_expires_in' => 600, 'cache_root' => '{os.path.join(d, 'cache')}', 'cache_depth' => 3 }}
[portal]
staticPrefix = /static
templateDir = /usr/share/lemonldap-ng/portal/templates
languages = fr, en
[handler]
status = 0
"""
open(os.path.join(d, "lemonldap-ng.ini"), "w").write(ini)
psgi = os.path.join(d, "portal.psgi")
open(psgi, "w").write("""use Plack::Builder;
use Lemonldap::NG::Portal::Main;
my $portal = Lemonldap::NG::Portal::Main->run({});
builder {
    enable 'Static', path => qr{^/static/}, root => '/usr/share/lemonldap-ng/portal/htdocs';
    $portal;
};
""")
env = dict(os.environ, LLNG_DEFAULTCONFFILE=os.path.join(d, "lemonldap-ng.ini"), PERL5LIB=os.path.join(here, "perl"))
sys.stdout.flush()
os.execvpe("starman", ["starman", "--listen", f"127.0.0.1:{args.port}:ssl", "--ssl-cert", args.cert, "--ssl-key", args.key,
                       "--workers", "4", "--read-timeout", "2", "--disable-keepalive", psgi], env)
