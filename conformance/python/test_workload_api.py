"""Our spire-agent's SPIFFE Workload API as py-spiffe (the upstream Python client) sees it.

Run by crates/spire-e2e/tests/conformance.rs against a live agent; see conftest.py for the
environment it sets.
"""

import os
import threading
import time

import grpc
import jwt
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from spiffe import JwtSource, JwtSvid, SpiffeId, TrustDomain, WorkloadApiClient, X509Source
from spiffe._proto import workload_pb2, workload_pb2_grpc
from spiffe.workloadapi.errors import ValidateJwtSvidError, WorkloadApiError


AUDIENCE = "spiffe://example.org/conformance-audience"


def _public_der(key) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def assert_key_matches_leaf(svid) -> None:
    """The agent must hand out the private key of the certificate it hands out: the public
    halves are equal and a signature made with the key verifies with the leaf."""
    leaf_key = svid.leaf.public_key()
    assert _public_der(svid.private_key.public_key()) == _public_der(leaf_key)
    message = b"conformance"
    if isinstance(svid.private_key, ec.EllipticCurvePrivateKey):
        signature = svid.private_key.sign(message, ec.ECDSA(hashes.SHA256()))
        leaf_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    elif isinstance(svid.private_key, rsa.RSAPrivateKey):
        signature = svid.private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        leaf_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    else:
        pytest.fail(f"unexpected key type {type(svid.private_key).__name__}")


def uri_sans(cert: x509.Certificate) -> list:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return ext.value.get_values_for_type(x509.UniformResourceIdentifier)


def verify_chain(chain, authorities) -> x509.Certificate:
    """Checks each certificate of `chain` is signed by the next and the last by one of
    `authorities`, all valid now; returns the authority that anchors it."""
    now = time.time()
    for cert in chain:
        assert cert.not_valid_before_utc.timestamp() - 60 <= now <= cert.not_valid_after_utc.timestamp()
    for child, parent in zip(chain, chain[1:]):
        child.verify_directly_issued_by(parent)
    for authority in authorities:
        try:
            chain[-1].verify_directly_issued_by(authority)
            return authority
        except (ValueError, TypeError, InvalidSignature):
            continue
    pytest.fail(f"no authority among {len(authorities)} signed {chain[-1].subject.rfc4514_string()}")


def test_fetch_x509_svid(client, setup):
    svid = client.fetch_x509_svid()
    assert svid.spiffe_id in (setup.spiffe_id, setup.second_spiffe_id)
    assert svid.cert_chain, "empty certificate chain"
    assert uri_sans(svid.leaf) == [str(svid.spiffe_id)]
    assert_key_matches_leaf(svid)


def test_fetch_x509_svids_gives_every_registered_identity(client, setup):
    svids = client.fetch_x509_svids()
    assert sorted(str(s.spiffe_id) for s in svids) == sorted(
        [str(setup.spiffe_id), str(setup.second_spiffe_id)]
    )
    for svid in svids:
        assert_key_matches_leaf(svid)
    main = next(s for s in svids if s.spiffe_id == setup.spiffe_id)
    dns = main.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert os.environ["CONFORMANCE_DNS_NAME"] in dns.value.get_values_for_type(x509.DNSName)


def test_fetch_x509_bundles_contains_the_ca_of_the_svid(client, setup):
    bundles = client.fetch_x509_bundles()
    bundle = bundles.get_bundle_for_trust_domain(setup.trust_domain)
    assert bundle is not None, f"no X.509 bundle for {setup.trust_domain}"
    assert bundle.x509_authorities, "X.509 bundle is empty"
    for authority in bundle.x509_authorities:
        assert authority.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    svid = client.fetch_x509_svid()
    verify_chain(svid.cert_chain, list(bundle.x509_authorities))
    # No bundle for a trust domain the agent does not federate with.
    assert bundles.get_bundle_for_trust_domain(TrustDomain("other.test")) is None


def test_x509_chain_passes_cryptography_client_verifier(client, setup):
    """cryptography's RFC 5280 path builder, a verifier we did not write, accepts the SVID
    as a client certificate chained to the bundle."""
    from cryptography.x509.verification import PolicyBuilder, Store

    context = client.fetch_x509_context()
    bundle = context.x509_bundle_set.get_bundle_for_trust_domain(setup.trust_domain)
    verifier = PolicyBuilder().store(Store(list(bundle.x509_authorities))).build_client_verifier()
    for svid in context.x509_svids:
        verified = verifier.verify(svid.leaf, svid.cert_chain[1:])
        assert str(svid.spiffe_id) in [
            san.value for san in verified.subjects if isinstance(san, x509.UniformResourceIdentifier)
        ]


def test_fetch_jwt_svid(client, setup):
    svid = client.fetch_jwt_svid(audience={AUDIENCE, "extra-audience"}, subject=setup.spiffe_id)
    assert svid.spiffe_id == setup.spiffe_id
    assert svid.audience == {AUDIENCE, "extra-audience"}
    assert svid.expiry > time.time()
    claims = jwt.decode(svid.token, options={"verify_signature": False})
    assert claims["sub"] == str(setup.spiffe_id)
    aud = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    assert sorted(aud) == sorted([AUDIENCE, "extra-audience"])
    header = jwt.get_unverified_header(svid.token)
    assert header.get("kid"), "JWT-SVID header has no kid"


def test_fetch_jwt_svid_for_the_second_identity(client, setup):
    svid = client.fetch_jwt_svid(audience={AUDIENCE}, subject=setup.second_spiffe_id)
    assert svid.spiffe_id == setup.second_spiffe_id


def test_fetch_jwt_bundles_validate_a_jwt_svid_locally(client, setup):
    bundles = client.fetch_jwt_bundles()
    bundle = bundles.get_bundle_for_trust_domain(setup.trust_domain)
    assert bundle is not None, f"no JWT bundle for {setup.trust_domain}"
    assert bundle.jwt_authorities, "JWT bundle has no keys"
    token = client.fetch_jwt_svid(audience={AUDIENCE}, subject=setup.spiffe_id).token
    kid = jwt.get_unverified_header(token)["kid"]
    assert bundle.get_jwt_authority(kid) is not None, f"kid {kid} not in the JWT bundle"

    validated = JwtSvid.parse_and_validate(token, bundle, {AUDIENCE})
    assert validated.spiffe_id == setup.spiffe_id
    with pytest.raises(Exception):
        JwtSvid.parse_and_validate(token, bundle, {"someone-else"})


def test_validate_jwt_svid(client, setup):
    token = client.fetch_jwt_svid(audience={AUDIENCE}, subject=setup.spiffe_id).token
    validated = client.validate_jwt_svid(token, AUDIENCE)
    assert validated.spiffe_id == setup.spiffe_id

    with pytest.raises(ValidateJwtSvidError) as refused:
        client.validate_jwt_svid(token, "spiffe://example.org/another-audience")
    assert "INVALID_ARGUMENT" in str(refused.value), str(refused.value)

    with pytest.raises(ValidateJwtSvidError) as malformed:
        client.validate_jwt_svid("not.a.jwt", AUDIENCE)
    assert "INVALID_ARGUMENT" in str(malformed.value), str(malformed.value)


def test_stream_x509_contexts_delivers_an_update(client, setup):
    received = []
    errors = []
    got_one = threading.Event()

    def on_success(context):
        received.append(context)
        got_one.set()

    def on_error(err):
        errors.append(err)
        got_one.set()

    handler = client.stream_x509_contexts(on_success, on_error, retry_connect=False)
    try:
        assert got_one.wait(15), "no X.509 context within 15s"
        assert not errors, errors
        context = received[0]
        assert setup.spiffe_id in [s.spiffe_id for s in context.x509_svids]
        assert context.x509_bundle_set.get_bundle_for_trust_domain(setup.trust_domain)
    finally:
        handler.cancel()


def test_x509_source(client, setup):
    def pick_second(svids):
        return next(s for s in svids if s.spiffe_id == setup.second_spiffe_id)

    with X509Source(
        workload_api_client=client, timeout_in_seconds=15, svid_picker=pick_second
    ) as source:
        context = source.get_x509_context()
        svid = context.default_svid
        assert svid.spiffe_id == setup.second_spiffe_id
        assert_key_matches_leaf(svid)
        bundle = source.get_bundle_for_trust_domain(setup.trust_domain)
        assert bundle is not None
        verify_chain(svid.cert_chain, list(bundle.x509_authorities))


def test_jwt_source(client, setup):
    with JwtSource(workload_api_client=client, timeout_in_seconds=15) as source:
        bundle = source.get_bundle_for_trust_domain(setup.trust_domain)
        assert bundle is not None and bundle.jwt_authorities
        svid = source.fetch_svid(audience={AUDIENCE}, subject=setup.spiffe_id)
        assert svid.spiffe_id == setup.spiffe_id
        validated = JwtSvid.parse_and_validate(svid.token, bundle, {AUDIENCE})
        assert validated.spiffe_id == setup.spiffe_id


def test_a_call_without_the_security_header_is_refused(setup):
    """The Workload API requires `workload.spiffe.io: true`; a raw gRPC call without it gets
    InvalidArgument, as upstream."""
    target = os.environ["SPIFFE_ENDPOINT_SOCKET"]
    if target.startswith("unix://"):
        target = "unix:" + target[len("unix://"):]
    with grpc.insecure_channel(target) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        with pytest.raises(grpc.RpcError) as bare:
            stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=[AUDIENCE]), timeout=10)
        assert bare.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # The same call with the header succeeds: the refusal was about the header.
        ok = stub.FetchJWTSVID(
            workload_pb2.JWTSVIDRequest(audience=[AUDIENCE], spiffe_id=str(setup.spiffe_id)),
            metadata=(("workload.spiffe.io", "true"),),
            timeout=10,
        )
        assert len(ok.svids) == 1 and ok.svids[0].spiffe_id == str(setup.spiffe_id)


def test_jwt_for_an_unregistered_spiffe_id_is_refused(client):
    from spiffe.workloadapi.errors import FetchJwtSvidError

    with pytest.raises(FetchJwtSvidError) as refused:
        client.fetch_jwt_svid(audience={AUDIENCE}, subject=SpiffeId("spiffe://example.org/not-mine"))
    assert "PERMISSION_DENIED" in str(refused.value), str(refused.value)


def test_py_spiffe_default_channel_reaches_the_agent(setup):
    """grpcio (>= 1.78) sends the socket path, percent-encoded, as `:authority` on unix
    sockets; the agent must serve such requests as grpc-go does (see vendor/README.md)."""
    with WorkloadApiClient(default_timeout=30) as plain:
        assert plain.fetch_x509_svid().spiffe_id in (setup.spiffe_id, setup.second_spiffe_id)
        token = plain.fetch_jwt_svid(audience={AUDIENCE}, subject=setup.spiffe_id).token
        assert plain.validate_jwt_svid(token, AUDIENCE).spiffe_id == setup.spiffe_id
