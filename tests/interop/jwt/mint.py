#!/usr/bin/env python3
"""JWT fixtures for tests/interop/40-jwt.sh, made with PyJWT (and `cryptography`).

  mint.py mint DIR JWKS_PORT   keys in DIR (openssl PEMs) -> JWKS files under DIR/www and
                               tokens in DIR/tokens/NAME.jwt (one token per file)
  mint.py check DIR            PyJWT itself verifies every fixture, including the ones node
                               `jose` wrote, with the verdict the proxy is expected to give:
                               a broken fixture fails here, not as a confusing proxy failure

Keys (made by openssl before `mint`): rsa-1, rsa-2, ec-1, ed-1, attacker (RSA) as
NAME.pem (PKCS#8) and NAME.pub.pem (SubjectPublicKeyInfo); hs.key is the HMAC secret
file as the proxy reads it (a trailing newline that the proxy trims).
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import time

import jwt
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_pem_public_key,
)

ISSUER = "https://idp.test"
AUDIENCE = "sallyport-api"
LEEWAY = 30


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_json(obj):
    return b64u(json.dumps(obj, separators=(",", ":")).encode())


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


def write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def private(d, stem):
    return load_pem_private_key(read(os.path.join(d, stem + ".pem"), "rb"), None)


def public(d, stem):
    return load_pem_public_key(read(os.path.join(d, stem + ".pub.pem"), "rb"))


def hs_secret(d):
    # The proxy trims one trailing newline from hs_secret_file; so do we.
    raw = read(os.path.join(d, "hs.key"), "rb")
    return raw[:-1] if raw.endswith(b"\n") else raw


def jwk(d, kid):
    stem = kid  # each key file is named after its kid
    key = public(d, stem)
    if stem.startswith("ec"):
        obj = json.loads(ECAlgorithm.to_jwk(key))
        obj["alg"] = "ES256"
    elif stem.startswith("ed"):
        obj = json.loads(OKPAlgorithm.to_jwk(key))
        obj["alg"] = "EdDSA"
    else:
        obj = json.loads(RSAAlgorithm.to_jwk(key))
        obj["alg"] = "RS256"
    obj["kid"] = kid
    obj["use"] = "sig"
    return obj


def jwks(d, kids):
    return json.dumps({"keys": [jwk(d, k) for k in kids]}, indent=2) + "\n"


def claims(sub, **extra):
    now = int(time.time())
    c = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "email": sub + "@example.test",
        "groups": ["staff", sub + "-team"],
        "iat": now,
        "exp": now + 600,
        "jti": b64u(os.urandom(9)),
    }
    for k, v in extra.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def mint(d, port):
    os.makedirs(os.path.join(d, "tokens"), exist_ok=True)
    for sub in ("main", "rot", "evil"):
        os.makedirs(os.path.join(d, "www", sub), exist_ok=True)
    write(os.path.join(d, "www", "main", "jwks.json"), jwks(d, ["rsa-1", "ec-1", "ed-1"]))
    write(os.path.join(d, "www", "rot", "jwks.json"), jwks(d, ["rsa-1", "ec-1", "ed-1"]))
    write(os.path.join(d, "jwks-rot-v2.json"), jwks(d, ["rsa-2", "ec-1", "ed-1"]))
    write(os.path.join(d, "www", "evil", "jwks.json"), jwks(d, ["attacker"]))

    rsa1, rsa2, ec1, ed1 = (private(d, s) for s in ("rsa-1", "rsa-2", "ec-1", "ed-1"))
    attacker = private(d, "attacker")
    now = int(time.time())
    tokens = {}

    def sign(name, payload, key, alg, kid=None, **headers):
        if kid is not None:
            headers["kid"] = kid
        tokens[name] = jwt.encode(payload, key, algorithm=alg, headers=headers or None)
        return tokens[name]

    def raw(name, header, payload, signer=None):
        """A token PyJWT would refuse to make: header and payload as given."""
        signing_input = b64u_json(header) + "." + b64u_json(payload)
        sig = signer(signing_input.encode()) if signer else b""
        tokens[name] = signing_input + "." + b64u(sig)
        return tokens[name]

    # --- accepted by the main instance (JWKS, issuer + audience pinned) ---
    sign("py-rs256", claims("alice", groups=["admins", "dev"]), rsa1, "RS256", "rsa-1")
    sign("py-es256", claims("bob"), ec1, "ES256", "ec-1")
    sign("py-eddsa", claims("carol"), ed1, "EdDSA", "ed-1")
    sign("aud-array", claims("dan", aud=["other-api", AUDIENCE]), rsa1, "RS256", "rsa-1")
    sign("in-leeway", claims("erin", exp=now - 5), rsa1, "RS256", "rsa-1")
    sign("crlf-sub", claims("eve\r\nX-Evil: 1"), rsa1, "RS256", "rsa-1")

    # --- refused by the main instance: 401 invalid_token ---
    sign("expired", claims("alice", iat=now - 7200, exp=now - 3600), rsa1, "RS256", "rsa-1")
    sign("bad-sig", claims("alice"), attacker, "RS256", "rsa-1")
    good = sign("tamper-src", claims("alice"), rsa1, "RS256", "rsa-1")
    h, _, s = good.split(".")
    tokens["tampered"] = h + "." + b64u_json(claims("admin", groups=["admins"])) + "." + s
    del tokens["tamper-src"]
    sign("unknown-kid", claims("alice"), attacker, "RS256", "rsa-unknown")
    sign("wrong-iss", claims("alice", iss="https://evil.test"), rsa1, "RS256", "rsa-1")
    sign("missing-iss", claims("alice", iss=None), rsa1, "RS256", "rsa-1")
    sign("wrong-aud", claims("alice", aud="other-api"), rsa1, "RS256", "rsa-1")
    sign("missing-aud", claims("alice", aud=None), rsa1, "RS256", "rsa-1")
    raw("alg-none", {"alg": "none", "typ": "JWT"}, claims("admin"))
    raw("alg-none-kid", {"alg": "none", "typ": "JWT", "kid": "rsa-1"}, claims("admin"))
    pem = read(os.path.join(d, "rsa-1.pub.pem"), "rb")
    raw("hs-confusion", {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims("admin"),
        lambda m: hmac.new(pem, m, hashlib.sha256).digest())
    stripped = sign("strip-src", claims("admin"), rsa1, "RS256", "rsa-1")
    tokens["stripped"] = stripped.rsplit(".", 1)[0] + "."
    del tokens["strip-src"]
    raw("exp-string", {"alg": "RS256", "typ": "JWT", "kid": "rsa-1"},
        claims("alice", exp="9999999999"),
        lambda m: jwt.get_algorithm_by_name("RS256").sign(m, rsa1))
    sign("no-exp", claims("alice", exp=None), rsa1, "RS256", "rsa-1")
    sign("nbf-future", claims("alice", nbf=now + 600), rsa1, "RS256", "rsa-1")
    sign("alg-not-pinned", claims("alice"), rsa1, "RS384", "rsa-1")
    sign("es256-rsa-kid", claims("alice"), ec1, "ES256", "rsa-1")
    sign("embedded-jwk", claims("admin"), attacker, "RS256", "attacker",
         jwk=jwk(d, "attacker"))
    sign("jku", claims("admin"), attacker, "RS256", "attacker",
         jku="https://127.0.0.1:%s/evil/jwks.json" % port)
    tokens["garbage"] = "not-a-jwt"

    # --- HS256 instance (hs_secret_file, no issuer/audience configured) ---
    secret = hs_secret(d)
    sign("hs-valid", claims("henry", iss="https://anyone.test", aud="anything"), secret,
         "HS256")
    sign("hs-newline", claims("henry"), secret + b"\n", "HS256")
    sign("hs-wrong", claims("henry"), b"w" * 40, "HS256")

    # --- PEM keys instance (keys = [...], no kid, Keycloak-like claims) ---
    kc = {"preferred_username": "grace", "realm_access": {"roles": ["ops", "viewers"]}}
    sign("pem-rs256", claims("uuid-1", groups=None, **kc), rsa1, "RS256")
    sign("pem-es256", claims("uuid-2", groups=None, **kc), ec1, "ES256")
    sign("pem-eddsa", claims("uuid-3", groups=None, **kc), ed1, "EdDSA")
    raw("pem-hs-confusion", {"alg": "HS256", "typ": "JWT"}, claims("admin", **kc),
        lambda m: hmac.new(pem, m, hashlib.sha256).digest())
    sign("pem-bad-sig", claims("uuid-1", **kc), attacker, "RS256")

    # --- throttling: distinct tokens, so no cache can blur what is counted ---
    for i in (1, 2, 3):
        sign("thr-bad-%d" % i, claims("alice"), attacker, "RS256", "rsa-1")
        sign("thr-expired-%d" % i, claims("alice", iat=now - 7200, exp=now - 3600 + i),
             rsa1, "RS256", "rsa-1")
    for i in (1, 2):
        sign("thr-valid-%d" % i, claims("alice"), rsa1, "RS256", "rsa-1")

    # --- rotation and outage: each token is fresh (never verified before its step) ---
    sign("rot-rsa1-a", claims("ivan"), rsa1, "RS256", "rsa-1")
    sign("rot-rsa1-b", claims("ivan"), rsa1, "RS256", "rsa-1")
    sign("rot-rsa2-a", claims("judy"), rsa2, "RS256", "rsa-2")
    sign("rot-rsa2-b", claims("judy"), rsa2, "RS256", "rsa-2")
    sign("rot-ec-b", claims("kate"), ec1, "ES256", "ec-1")
    sign("rot-unknown", claims("judy"), attacker, "RS256", "rsa-3")
    sign("rot-unknown-2", claims("judy"), attacker, "RS256", "rsa-4")

    for name, tok in tokens.items():
        write(os.path.join(d, "tokens", name + ".jwt"), tok)


# (fixture, key set the proxy instance has, whether PyJWT must accept it there)
def expectations():
    e = []
    for n in ("py-rs256", "py-es256", "py-eddsa", "aud-array", "in-leeway", "crlf-sub",
              "jose-rs256", "jose-es256", "jose-eddsa", "thr-valid-1", "thr-valid-2",
              "rot-rsa1-a", "rot-rsa1-b", "rot-ec-b"):
        e.append((n, "main", True))
    for n in ("expired", "bad-sig", "tampered", "unknown-kid", "wrong-iss", "missing-iss",
              "wrong-aud", "missing-aud", "alg-none", "alg-none-kid", "hs-confusion",
              "stripped", "no-exp", "nbf-future", "alg-not-pinned", "es256-rsa-kid",
              "embedded-jwk", "jku", "garbage", "thr-bad-1", "thr-bad-2", "thr-bad-3",
              "thr-expired-1", "thr-expired-2", "thr-expired-3"):
        e.append((n, "main", False))
    # after rotation: rsa-2 in, rsa-1 out
    e += [("rot-rsa2-a", "rot2", True), ("rot-rsa2-b", "rot2", True),
          ("rot-ec-b", "rot2", True), ("rot-rsa1-b", "rot2", False),
          ("rot-unknown", "rot2", False), ("rot-unknown-2", "rot2", False)]
    e += [("hs-valid", "hs", True), ("jose-hs256", "hs", True), ("hs-newline", "hs", False),
          ("hs-wrong", "hs", False), ("py-rs256", "hs", False)]
    e += [("pem-rs256", "pem", True), ("pem-es256", "pem", True), ("pem-eddsa", "pem", True),
          ("jose-pem-rs256", "pem", True), ("pem-hs-confusion", "pem", False),
          ("pem-bad-sig", "pem", False)]
    return e


def verify(d, keyset, token):
    """PyJWT's verdict, configured as the proxy instance is. Raises on rejection."""
    if keyset == "hs":
        return jwt.decode(token, hs_secret(d), algorithms=["HS256"],
                          options={"require": ["exp"], "verify_aud": False})
    algs = ["RS256", "ES256", "EdDSA"]
    opts = {"require": ["exp", "iss"]}
    if keyset == "pem":
        header = jwt.get_unverified_header(token)
        stem = {"RS256": "rsa-1", "ES256": "ec-1", "EdDSA": "ed-1"}.get(header.get("alg"),
                                                                       "rsa-1")
        return jwt.decode(token, public(d, stem), algorithms=algs, issuer=ISSUER,
                          leeway=LEEWAY, options=dict(opts, verify_aud=False))
    kids = ["rsa-2", "ec-1", "ed-1"] if keyset == "rot2" else ["rsa-1", "ec-1", "ed-1"]
    keys = jwt.PyJWKSet.from_dict({"keys": [jwk(d, k) for k in kids]})
    kid = jwt.get_unverified_header(token).get("kid")
    key = keys[kid]  # KeyError for an unknown kid: PyJWT has no key, so it refuses too
    return jwt.decode(token, key, algorithms=algs, issuer=ISSUER, audience=AUDIENCE,
                      leeway=LEEWAY, options=dict(opts, require=["exp", "iss", "aud"]))


def check(d):
    failures = 0
    tokdir = os.path.join(d, "tokens")
    present = {f[:-4] for f in os.listdir(tokdir) if f.endswith(".jwt")}
    for name, keyset, valid in expectations():
        if name not in present:
            print("FAIL missing fixture %s" % name)
            failures += 1
            continue
        token = read(os.path.join(tokdir, name + ".jwt")).strip()
        try:
            verify(d, keyset, token)
            got, why = True, ""
        except Exception as exc:  # any refusal, whatever PyJWT calls it
            got, why = False, "%s: %s" % (type(exc).__name__, exc)
        if got != valid:
            print("FAIL %s against %s: PyJWT says %s, the fixture means %s %s"
                  % (name, keyset, "valid" if got else "invalid",
                     "valid" if valid else "invalid", why))
            failures += 1
    # PyJWT coerces a string exp with int(), so it would accept this one: check its shape.
    payload = json.loads(base64.urlsafe_b64decode(
        read(os.path.join(tokdir, "exp-string.jwt")).split(".")[1] + "=="))
    if payload.get("exp") != "9999999999":
        print("FAIL exp-string fixture has exp %r" % (payload.get("exp"),))
        failures += 1
    if not read(os.path.join(tokdir, "stripped.jwt")).endswith("."):
        print("FAIL stripped fixture still has a signature")
        failures += 1
    print("checked %d fixtures, %d wrong" % (len(expectations()) + 2, failures))
    return failures


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "mint":
        mint(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "check":
        sys.exit(1 if check(sys.argv[2]) else 0)
    else:
        sys.exit(__doc__)
