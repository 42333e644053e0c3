use super::*;

use SpiffeIdError as E;

/// One row: the input, and either its trust domain and path or the error it must give.
enum Want<'a> {
    Ok(&'a str, &'a str),
    Err(E),
}

fn bad_td(found: char, position: usize) -> Want<'static> {
    Want::Err(E::BadTrustDomainChar { found, position })
}

fn bad_path(found: char, position: usize) -> Want<'static> {
    Want::Err(E::BadPathChar { found, position })
}

#[test]
fn spiffe_id_table() {
    let long_td = "a".repeat(255);
    let too_long_td = "a".repeat(256);
    let long_path = format!("/{}", "p".repeat(2048 - "spiffe://td/".len()));
    let too_long_path = format!("/{}", "p".repeat(2049 - "spiffe://td/".len()));
    let long_td_id = format!("spiffe://{long_td}");
    let too_long_td_id = format!("spiffe://{too_long_td}/x");
    let long_id = format!("spiffe://td{long_path}");
    let too_long_id = format!("spiffe://td{too_long_path}");

    let cases: Vec<(&str, Want<'_>)> = vec![
        // Valid.
        ("spiffe://example.org", Want::Ok("example.org", "")),
        (
            "spiffe://example.org/workload",
            Want::Ok("example.org", "/workload"),
        ),
        (
            "spiffe://example.org/ns/prod/sa/web",
            Want::Ok("example.org", "/ns/prod/sa/web"),
        ),
        ("spiffe://td/a.b", Want::Ok("td", "/a.b")),
        ("spiffe://td/.a", Want::Ok("td", "/.a")),
        ("spiffe://td/..a", Want::Ok("td", "/..a")),
        ("spiffe://td/...", Want::Ok("td", "/...")),
        ("spiffe://td/a-b_c", Want::Ok("td", "/a-b_c")),
        ("spiffe://td/UPPER/Case", Want::Ok("td", "/UPPER/Case")),
        ("spiffe://td/0123456789", Want::Ok("td", "/0123456789")),
        (
            "spiffe://my-td_1.example.org/x",
            Want::Ok("my-td_1.example.org", "/x"),
        ),
        ("spiffe://1.2.3.4/x", Want::Ok("1.2.3.4", "/x")),
        ("spiffe://-/x", Want::Ok("-", "/x")),
        ("spiffe://_/x", Want::Ok("_", "/x")),
        ("spiffe://./x", Want::Ok(".", "/x")),
        (
            "spiffe://td/spire/agent/join_token/abc",
            Want::Ok("td", "/spire/agent/join_token/abc"),
        ),
        (
            "spiffe://td/a/b/c/d/e/f/g",
            Want::Ok("td", "/a/b/c/d/e/f/g"),
        ),
        (&long_td_id, Want::Ok(&long_td, "")),
        (&long_id, Want::Ok("td", &long_path)),
        // Scheme.
        ("", Want::Err(E::Empty)),
        ("example.org/workload", Want::Err(E::WrongScheme)),
        ("SPIFFE://example.org/workload", Want::Err(E::WrongScheme)),
        ("Spiffe://example.org/workload", Want::Err(E::WrongScheme)),
        ("spiffE://example.org", Want::Err(E::WrongScheme)),
        ("https://example.org/workload", Want::Err(E::WrongScheme)),
        ("spiffe:/example.org", Want::Err(E::WrongScheme)),
        ("spiffe:example.org", Want::Err(E::WrongScheme)),
        ("spiffe//example.org", Want::Err(E::WrongScheme)),
        (" spiffe://example.org", Want::Err(E::WrongScheme)),
        ("spiffe", Want::Err(E::WrongScheme)),
        ("://example.org", Want::Err(E::WrongScheme)),
        // Trust domain missing.
        ("spiffe://", Want::Err(E::MissingTrustDomain)),
        ("spiffe:///", Want::Err(E::MissingTrustDomain)),
        ("spiffe:///path", Want::Err(E::MissingTrustDomain)),
        // Trust domain characters.
        ("spiffe://Example.org", bad_td('E', 0)),
        ("spiffe://example.ORG/x", bad_td('O', 8)),
        ("spiffe://exam ple.org", bad_td(' ', 4)),
        ("spiffe://example.org:8080/x", bad_td(':', 11)),
        ("spiffe://user@example.org/x", bad_td('@', 4)),
        ("spiffe://user:pw@example.org", bad_td(':', 4)),
        ("spiffe://example.org?query", bad_td('?', 11)),
        ("spiffe://example.org#frag", bad_td('#', 11)),
        ("spiffe://exa%41mple.org", bad_td('%', 3)),
        ("spiffe://[::1]/x", bad_td('[', 0)),
        ("spiffe://ex\\ample", bad_td('\\', 2)),
        ("spiffe://exämple.org", bad_td('ä', 2)),
        ("spiffe://example.org\n", bad_td('\n', 11)),
        ("spiffe://example+org", bad_td('+', 7)),
        ("spiffe://example*org", bad_td('*', 7)),
        ("spiffe://example~org", bad_td('~', 7)),
        ("spiffe://example!org", bad_td('!', 7)),
        ("spiffe://example$org", bad_td('$', 7)),
        ("spiffe://example,org", bad_td(',', 7)),
        ("spiffe://example;org", bad_td(';', 7)),
        ("spiffe://example=org", bad_td('=', 7)),
        ("spiffe://example'org", bad_td('\'', 7)),
        ("spiffe://example(org", bad_td('(', 7)),
        // Trust domain length.
        (
            &too_long_td_id,
            Want::Err(E::TrustDomainTooLong { len: 256 }),
        ),
        // Path segments.
        ("spiffe://example.org/", Want::Err(E::TrailingSlash)),
        ("spiffe://example.org/path/", Want::Err(E::TrailingSlash)),
        ("spiffe://example.org//", Want::Err(E::EmptySegment)),
        ("spiffe://example.org//path", Want::Err(E::EmptySegment)),
        ("spiffe://example.org/a//b", Want::Err(E::EmptySegment)),
        ("spiffe://example.org/.", Want::Err(E::DotSegment)),
        ("spiffe://example.org/..", Want::Err(E::DotSegment)),
        ("spiffe://example.org/./a", Want::Err(E::DotSegment)),
        ("spiffe://example.org/a/../b", Want::Err(E::DotSegment)),
        ("spiffe://example.org/a/.", Want::Err(E::DotSegment)),
        ("spiffe://example.org/a/..", Want::Err(E::DotSegment)),
        // Path characters, including query, fragment and percent-encoding.
        ("spiffe://example.org/p?q=1", bad_path('?', 2)),
        ("spiffe://example.org/p#frag", bad_path('#', 2)),
        ("spiffe://example.org/p%20q", bad_path('%', 2)),
        ("spiffe://example.org/%2e%2e", bad_path('%', 1)),
        ("spiffe://example.org/a b", bad_path(' ', 2)),
        ("spiffe://example.org/a:b", bad_path(':', 2)),
        ("spiffe://example.org/a@b", bad_path('@', 2)),
        ("spiffe://example.org/a+b", bad_path('+', 2)),
        ("spiffe://example.org/a~b", bad_path('~', 2)),
        ("spiffe://example.org/a*b", bad_path('*', 2)),
        ("spiffe://example.org/a\\b", bad_path('\\', 2)),
        ("spiffe://example.org/ü", bad_path('ü', 1)),
        ("spiffe://example.org/x/a$b", bad_path('$', 4)),
        ("spiffe://example.org/a\tb", bad_path('\t', 2)),
        ("spiffe://example.org/a\0", bad_path('\0', 2)),
        ("spiffe://example.org/a,b", bad_path(',', 2)),
        ("spiffe://example.org/a=b", bad_path('=', 2)),
        ("spiffe://example.org/a&b", bad_path('&', 2)),
        ("spiffe://example.org/a!b", bad_path('!', 2)),
        // Whole-ID length.
        (&too_long_id, Want::Err(E::TooLong { len: 2049 })),
    ];
    assert!(cases.len() >= 80, "the table must keep at least 80 cases");

    for (input, want) in cases {
        let got = SpiffeId::parse(input);
        match want {
            Want::Ok(td, path) => {
                let id = got.unwrap_or_else(|e| panic!("{input:?} must parse, got {e}"));
                assert_eq!(id.trust_domain_name(), td, "{input:?}");
                assert_eq!(id.trust_domain().name(), td, "{input:?}");
                assert_eq!(id.path(), path, "{input:?}");
                assert_eq!(id.to_string(), input, "{input:?} must print back unchanged");
            }
            Want::Err(err) => {
                assert_eq!(got, Err(err), "{input:?}");
            }
        }
    }
}

/// go-spiffe's messages, word for word: the CLI prints them as upstream's does.
#[test]
fn every_error_says_what_is_wrong_in_go_spiffes_words() {
    let msg = |s: &str| SpiffeId::parse(s).unwrap_err().to_string();
    assert_eq!(msg("http://x"), "scheme is missing or invalid");
    assert_eq!(msg("spiffe://"), "trust domain is missing");
    assert_eq!(
        msg("spiffe://A"),
        "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores"
    );
    assert_eq!(msg("spiffe://td/"), "path cannot have a trailing slash");
    assert_eq!(msg("spiffe://td//a"), "path cannot contain empty segments");
    assert_eq!(msg("spiffe://td/.."), "path cannot contain dot segments");
    assert_eq!(
        msg("spiffe://td/a%20"),
        "path segment characters are limited to letters, numbers, dots, dashes, and underscores"
    );
}

#[test]
fn trust_domain_accepts_name_or_id() {
    assert_eq!(
        TrustDomain::new("example.org").unwrap().name(),
        "example.org"
    );
    assert_eq!(
        TrustDomain::new("spiffe://example.org").unwrap().name(),
        "example.org"
    );
    assert_eq!(
        TrustDomain::new("spiffe://example.org/a/b").unwrap().name(),
        "example.org"
    );
    assert_eq!(
        TrustDomain::new("example.org").unwrap().id_string(),
        "spiffe://example.org"
    );
    assert_eq!(TrustDomain::new(""), Err(E::MissingTrustDomain));
    assert_eq!(TrustDomain::new("Example.org"), Err(bad_td_err('E', 0)));
    assert_eq!(
        TrustDomain::new("example.org:443"),
        Err(bad_td_err(':', 11))
    );
    assert_eq!(TrustDomain::new("https://example.org"), Err(E::WrongScheme));
    assert_eq!(
        TrustDomain::new(&"a".repeat(256)),
        Err(E::TrustDomainTooLong { len: 256 })
    );
}

fn bad_td_err(found: char, position: usize) -> E {
    E::BadTrustDomainChar { found, position }
}

#[test]
fn ids_are_built_from_paths_and_segments() {
    let td = TrustDomain::new("example.org").unwrap();
    let id = SpiffeId::from_segments(&td, &["spire", "agent", "join_token", "t1"]).unwrap();
    assert_eq!(
        id.as_str(),
        "spiffe://example.org/spire/agent/join_token/t1"
    );
    assert_eq!(id.path(), "/spire/agent/join_token/t1");
    assert!(id.is_member_of(&td));
    assert!(!id.is_member_of(&TrustDomain::new("other.org").unwrap()));
    assert_eq!(
        td.id_with_path("").unwrap().as_str(),
        "spiffe://example.org"
    );
    assert_eq!(td.id_with_path("nope"), Err(E::NoLeadingSlash));
    assert_eq!(
        SpiffeId::from_segments(&td, &["a/b"]),
        Err(E::BadPathChar {
            found: '/',
            position: 2
        })
    );
    assert_eq!(SpiffeId::from_segments(&td, &[".."]), Err(E::DotSegment));
    assert_eq!(SpiffeId::from_segments(&td, &[""]), Err(E::TrailingSlash));
}

#[test]
fn serde_uses_the_string_form_and_validates() {
    let id: SpiffeId = serde_json::from_str("\"spiffe://td/x\"").unwrap();
    assert_eq!(serde_json::to_string(&id).unwrap(), "\"spiffe://td/x\"");
    let err = serde_json::from_str::<SpiffeId>("\"spiffe://td/x/\"").unwrap_err();
    assert!(err.to_string().contains("trailing slash"));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = SpiffeId::parse(&s);
            let _ = TrustDomain::new(&s);
        }

        #[test]
        fn valid_ids_round_trip(
            td in "[a-z0-9._-]{1,40}",
            segs in proptest::collection::vec("[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,10}", 0..6),
        ) {
            let input = format!("spiffe://{td}{}", segs.iter().map(|s| format!("/{s}")).collect::<String>());
            let id = SpiffeId::parse(&input).unwrap();
            prop_assert_eq!(id.as_str(), input.as_str());
            prop_assert_eq!(id.trust_domain_name(), td.as_str());
        }
    }
}
