"""An OpenID Connect relying party written with PyJWT, for the OIDC Discovery Provider test
(crates/spire-e2e/tests/oidc_discovery.rs). It knows only the issuer URL: it fetches the
discovery document, then the JWK Set the document names (PyJWT's PyJWKClient), and verifies
the token's signature, `iss`, `aud` and `exp` as a cloud IAM would.

Usage: oidc_rp.py ISSUER_URL AUDIENCE TOKEN [DISCOVERY_BASE_URL]
(DISCOVERY_BASE_URL, default ISSUER_URL: where the discovery document is, for a provider that
names another issuer with jwt_issuer.)
Prints one JSON line (issuer, jwks_uri, kid, sub, alg) and exits 0 when the token verifies;
prints the error and exits 1 when it does not.
"""

import json
import sys
import urllib.request

import jwt


def main() -> int:
    issuer_url, audience, token = sys.argv[1:4]
    base_url = sys.argv[4] if len(sys.argv) > 4 else issuer_url
    config_url = base_url.rstrip("/") + "/.well-known/openid-configuration"
    with urllib.request.urlopen(config_url, timeout=30) as response:
        discovery = json.load(response)
    if discovery["issuer"] != issuer_url:
        print(f"issuer mismatch: document says {discovery['issuer']!r}, expected {issuer_url!r}")
        return 1
    algorithms = discovery["id_token_signing_alg_values_supported"]
    client = jwt.PyJWKClient(discovery["jwks_uri"], cache_keys=False, timeout=30)
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
    except jwt.PyJWTError as error:
        print(f"verification failed: {type(error).__name__}: {error}")
        return 1
    header = jwt.get_unverified_header(token)
    print(
        json.dumps(
            {
                "issuer": discovery["issuer"],
                "jwks_uri": discovery["jwks_uri"],
                "kid": header.get("kid"),
                "alg": header.get("alg"),
                "sub": claims["sub"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
