"""A long-lived OpenID Connect relying party written with PyJWT, for the OIDC Discovery
Provider test (crates/spire-e2e/tests/oidc_discovery.rs). Unlike oidc_rp.py it stays up
across a JWT key rotation with ONE PyJWKClient that caches keys (cache_keys=True), as a
service verifying tokens would: a token signed by a key it has not seen makes PyJWT fetch
the JWK Set again (the refresh on an unknown kid), a known key is served from its cache.

Usage: oidc_rp_long_lived.py ISSUER_URL
It fetches the discovery document once, then reads commands on standard input, one per line,
and answers each with one JSON line:
  verify AUDIENCE TOKEN  -> {"ok": true, "kid", "sub", "fetches"} or {"ok": false, "error"}
  forget                 -> {"kids": [...], "fetches"}: drops the cached signing keys and
                            fetches the JWK Set again (what a relying party does when told a
                            key was revoked, or when its cache expires)
"fetches" counts the JWK Set downloads so far.
"""

import json
import sys
import urllib.request

import jwt


class CountingClient(jwt.PyJWKClient):
    """A PyJWKClient that counts its JWK Set downloads."""

    fetches = 0

    def fetch_data(self):
        self.fetches += 1
        return super().fetch_data()


def main() -> int:
    issuer_url = sys.argv[1]
    config_url = issuer_url.rstrip("/") + "/.well-known/openid-configuration"
    with urllib.request.urlopen(config_url, timeout=30) as response:
        discovery = json.load(response)
    algorithms = discovery["id_token_signing_alg_values_supported"]
    # cooldown_duration=0: PyJWT otherwise waits 30 s after a download before it refreshes
    # for an unknown kid; the test rotates sooner than that.
    client = CountingClient(
        discovery["jwks_uri"], cache_keys=True, timeout=30, cooldown_duration=0
    )
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "verify":
            audience, token = words[1:3]
            try:
                signing_key = client.get_signing_key_from_jwt(token)
                claims = jwt.decode(
                    token,
                    signing_key.key,
                    algorithms=algorithms,
                    audience=audience,
                    issuer=discovery["issuer"],
                    options={"require": ["exp", "iss", "aud", "sub"]},
                )
                answer = {
                    "ok": True,
                    "kid": jwt.get_unverified_header(token).get("kid"),
                    "sub": claims["sub"],
                }
            except jwt.PyJWTError as error:
                answer = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        elif words[0] == "forget":
            client.get_signing_key.cache_clear()
            keys = client.get_jwk_set(refresh=True).keys
            answer = {"kids": sorted(key.key_id for key in keys)}
        else:
            answer = {"ok": False, "error": f"unknown command {words[0]!r}"}
        answer["fetches"] = client.fetches
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
