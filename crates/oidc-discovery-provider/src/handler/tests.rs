#![allow(clippy::unwrap_used, reason = "tests")]

use http_body_util::BodyExt as _;
use spire_core::jwt::JwtAuthority;
use spire_core::keys::{KeyType, PrivateKey};

use super::*;

fn config() -> HandlerConfig {
    HandlerConfig {
        domains: DomainPolicy::allowlist(&["oidc.example.org".to_owned()]).unwrap(),
        allow_insecure_scheme: false,
        set_key_use: false,
        jwt_issuer: None,
        jwks_uri: None,
        server_path_prefix: "/".to_owned(),
    }
}

fn get(path: &str, host: &str) -> Request<()> {
    Request::builder()
        .uri(path)
        .header("host", host)
        .body(())
        .unwrap()
}

fn body(response: Response<Full<Bytes>>) -> String {
    let bytes = futures_executor(response.into_body().collect()).unwrap();
    String::from_utf8(bytes.to_bytes().to_vec()).unwrap()
}

/// The body is a ready `Full`: one poll completes it.
fn futures_executor<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

fn document(handler: &Handler, request: &Request<()>, tls: bool) -> serde_json::Value {
    let response = handler.handle(request, tls);
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    serde_json::from_str(&body(response)).unwrap()
}

#[test]
fn the_discovery_document_is_upstreams() {
    let handler = Handler::new(config(), KeySource::new());
    let response = handler.handle(
        &get("/.well-known/openid-configuration", "oidc.example.org"),
        true,
    );
    assert_eq!(response.status(), 200);
    assert_eq!(
        body(response),
        r#"{
  "issuer": "https://oidc.example.org",
  "jwks_uri": "https://oidc.example.org/keys",
  "authorization_endpoint": "",
  "response_types_supported": [
    "id_token"
  ],
  "subject_types_supported": [
    "public"
  ],
  "id_token_signing_alg_values_supported": [
    "RS256",
    "ES256",
    "ES384"
  ]
}"#
    );
}

#[test]
fn the_scheme_follows_allow_insecure_scheme_and_forwarded_headers() {
    let plain = Handler::new(config(), KeySource::new());
    let doc = document(
        &plain,
        &get("/.well-known/openid-configuration", "oidc.example.org:8080"),
        false,
    );
    assert_eq!(doc["issuer"], "https://oidc.example.org:8080");

    let insecure = Handler::new(
        HandlerConfig {
            allow_insecure_scheme: true,
            ..config()
        },
        KeySource::new(),
    );
    let request = get("/.well-known/openid-configuration", "oidc.example.org:8080");
    let doc = document(&insecure, &request, false);
    assert_eq!(doc["issuer"], "http://oidc.example.org:8080");
    assert_eq!(doc["jwks_uri"], "http://oidc.example.org:8080/keys");
    assert_eq!(
        document(&insecure, &request, true)["issuer"],
        "https://oidc.example.org:8080"
    );

    let proxied = Request::builder()
        .uri("/.well-known/openid-configuration")
        .header("host", "127.0.0.1:8080")
        .header("x-forwarded-host", "oidc.example.org")
        .header("x-forwarded-proto", "HTTPS")
        .body(())
        .unwrap();
    let doc = document(&insecure, &proxied, false);
    assert_eq!(doc["issuer"], "https://oidc.example.org");
    let forwarded = Request::builder()
        .uri("/.well-known/openid-configuration")
        .header("host", "oidc.example.org")
        .header("forwarded", "for=1.2.3.4;proto=https")
        .body(())
        .unwrap();
    assert_eq!(
        document(&insecure, &forwarded, false)["issuer"],
        "https://oidc.example.org"
    );
}

#[test]
fn jwt_issuer_jwks_uri_and_the_path_prefix() {
    let issuer = Handler::new(
        HandlerConfig {
            jwt_issuer: Some("https://issuer.example.org/tenant/".to_owned()),
            ..config()
        },
        KeySource::new(),
    );
    let doc = document(
        &issuer,
        &get("/.well-known/openid-configuration", "oidc.example.org"),
        true,
    );
    assert_eq!(doc["issuer"], "https://issuer.example.org/tenant/");
    assert_eq!(doc["jwks_uri"], "https://issuer.example.org/tenant/keys");

    let bare_issuer = Handler::new(
        HandlerConfig {
            jwt_issuer: Some("https://issuer.example.org".to_owned()),
            ..config()
        },
        KeySource::new(),
    );
    let doc = document(
        &bare_issuer,
        &get("/.well-known/openid-configuration", "oidc.example.org"),
        true,
    );
    assert_eq!(doc["jwks_uri"], "https://issuer.example.org/keys");

    let both = Handler::new(
        HandlerConfig {
            jwt_issuer: Some("https://issuer.example.org".to_owned()),
            jwks_uri: Some("https://cdn.example.org/jwks.json".to_owned()),
            ..config()
        },
        KeySource::new(),
    );
    let doc = document(
        &both,
        &get("/.well-known/openid-configuration", "oidc.example.org"),
        true,
    );
    assert_eq!(doc["jwks_uri"], "https://cdn.example.org/jwks.json");

    let prefixed = Handler::new(
        HandlerConfig {
            server_path_prefix: "/oidc".to_owned(),
            ..config()
        },
        KeySource::new(),
    );
    let doc = document(
        &prefixed,
        &get("/oidc/.well-known/openid-configuration", "oidc.example.org"),
        true,
    );
    assert_eq!(doc["issuer"], "https://oidc.example.org/oidc");
    assert_eq!(doc["jwks_uri"], "https://oidc.example.org/oidc/keys");
    assert_eq!(
        prefixed
            .handle(
                &get("/.well-known/openid-configuration", "oidc.example.org"),
                true
            )
            .status(),
        404
    );
    assert_eq!(
        prefixed
            .handle(&get("/oidc/keys", "oidc.example.org"), true)
            .status(),
        500,
        "routed, but no keys yet"
    );
}

#[test]
fn errors_are_upstreams() {
    let handler = Handler::new(config(), KeySource::new());
    let response = handler.handle(
        &get("/.well-known/openid-configuration", "evil.example.org"),
        true,
    );
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(
        body(response),
        "domain \"evil.example.org\" is not allowed\n"
    );

    let response = handler.handle(&get("/keys", "oidc.example.org"), true);
    assert_eq!(response.status(), 500);
    assert_eq!(body(response), "document not available\n");

    let response = handler.handle(&get("/nothing", "oidc.example.org"), true);
    assert_eq!(response.status(), 404);
    assert_eq!(body(response), "404 page not found\n");

    for path in ["/keys", "/.well-known/openid-configuration"] {
        let post = Request::builder()
            .method("POST")
            .uri(path)
            .header("host", "oidc.example.org")
            .body(())
            .unwrap();
        let response = handler.handle(&post, true);
        assert_eq!(response.status(), 405);
        assert_eq!(body(response), "method not allowed\n");
    }
}

#[test]
fn keys_follow_the_source_with_caching_headers() {
    let source = KeySource::new();
    let handler = Handler::new(
        HandlerConfig {
            set_key_use: true,
            ..config()
        },
        source.clone(),
    );
    let authority = |kid: &str| JwtAuthority {
        key_id: kid.to_owned(),
        public_key_der: PrivateKey::generate(KeyType::EcP256)
            .unwrap()
            .public_key_der(),
        expires_at: None,
    };
    source.update(Vec::new());
    let response = handler.handle(&get("/keys", "anything"), false);
    assert_eq!(response.status(), 200, "the keys do not check the Host");
    assert_eq!(body(response), "{\n  \"keys\": null\n}");

    source.update(vec![authority("first")]);
    let response = handler.handle(&get("/keys", "oidc.example.org"), true);
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(
        headers["cache-control"],
        "no-cache, no-store, must-revalidate"
    );
    assert_eq!(headers["pragma"], "no-cache");
    assert_eq!(headers["expires"], "0");
    assert_eq!(headers["content-type"], "application/json");
    let keys: serde_json::Value = serde_json::from_str(&body(response)).unwrap();
    assert_eq!(keys["keys"][0]["kid"], "first");
    assert_eq!(keys["keys"][0]["use"], "sig");
    assert_eq!(keys["keys"][0]["alg"], "ES256");

    let last_modified = headers["last-modified"].to_str().unwrap().to_owned();
    let conditional = Request::builder()
        .uri("/keys")
        .header("if-modified-since", &last_modified)
        .body(())
        .unwrap();
    assert_eq!(handler.handle(&conditional, true).status(), 304);

    source.update(vec![authority("first"), authority("second")]);
    let keys: serde_json::Value =
        serde_json::from_str(&body(handler.handle(&get("/keys", "x"), true))).unwrap();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2);
}

#[test]
fn paths_join_as_go_joins_them() {
    assert_eq!(join_path("/", "keys"), "/keys");
    assert_eq!(join_path("/a/", "keys"), "/a/keys");
    assert_eq!(join_path("", "keys"), "keys");
    assert_eq!(join_path("/a", "/keys/"), "/a/keys/");
    assert_eq!(url_string("https", "h", "keys"), "https://h/keys");
    assert_eq!(split_url("https://u@h:1/p/q?x#y"), ("https", "h:1", "/p/q"));
}

#[test]
fn unclean_paths_are_redirected_as_go_does() {
    let handler = Handler::new(config(), KeySource::new());
    let response = handler.handle(&get("//keys?x=1", "oidc.example.org"), true);
    assert_eq!(response.status(), 307);
    assert_eq!(response.headers()["location"], "/keys?x=1");
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    assert_eq!(
        body(response),
        "<a href=\"/keys?x=1\">Temporary Redirect</a>.\n\n"
    );
    assert_eq!(clean_path("/a/../keys"), "/keys");
    assert_eq!(clean_path("/keys/"), "/keys/");
    assert_eq!(clean_path("/./x/."), "/x");
    assert_eq!(clean_path("/"), "/");
    let response = handler.handle(&get("/keys/", "oidc.example.org"), true);
    assert_eq!(response.status(), 404, "a trailing slash is clean");
}

#[test]
fn ranges_are_read_as_go_reads_them() {
    assert_eq!(parse_range("", 10), Ok(None));
    assert_eq!(parse_range("bytes=0-3", 10), Ok(Some((0, 4))));
    assert_eq!(parse_range("bytes=5-", 10), Ok(Some((5, 5))));
    assert_eq!(parse_range("bytes=-3", 10), Ok(Some((7, 3))));
    assert_eq!(parse_range("bytes=-30", 10), Ok(Some((0, 10))));
    assert_eq!(parse_range("bytes=8-30", 10), Ok(Some((8, 2))));
    assert_eq!(parse_range("bytes=0-1,4-5", 10), Ok(None));
    assert_eq!(parse_range("bytes=10-", 10), Err(RangeError::NoOverlap));
    assert_eq!(parse_range("bytes=3-1", 10), Err(RangeError::Invalid));
    assert_eq!(parse_range("lines=1-2", 10), Err(RangeError::Invalid));
    assert_eq!(parse_range("bytes=x-2", 10), Err(RangeError::Invalid));

    let source = KeySource::new();
    source.update(Vec::new());
    let handler = Handler::new(config(), source);
    let ranged = Request::builder()
        .uri("/keys")
        .header("range", "bytes=0-4")
        .body(())
        .unwrap();
    let response = handler.handle(&ranged, true);
    assert_eq!(response.status(), 206);
    assert_eq!(response.headers()["content-range"], "bytes 0-4/18");
    assert_eq!(body(response), "{\n  \"");
    let beyond = Request::builder()
        .uri("/keys")
        .header("range", "bytes=100-")
        .body(())
        .unwrap();
    let response = handler.handle(&beyond, true);
    assert_eq!(response.status(), 416);
    assert_eq!(response.headers()["content-range"], "bytes */18");
    assert_eq!(body(response), "invalid range: failed to overlap\n");
}
