"""Shared set-up of the py-spiffe conformance tests.

crates/spire-e2e/tests/conformance.rs starts a server and an agent, registers two entries for
this process's uid and runs pytest with these variables:

    SPIFFE_ENDPOINT_SOCKET         unix:///path/to/agent.sock (read by py-spiffe itself)
    CONFORMANCE_TRUST_DOMAIN       the agent's trust domain (example.org)
    CONFORMANCE_SPIFFE_ID          the workload's main SPIFFE ID
    CONFORMANCE_SECOND_SPIFFE_ID   a second SPIFFE ID registered for the same workload
"""

import os
from dataclasses import dataclass

import pytest
from spiffe import SpiffeId, TrustDomain, WorkloadApiClient

def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        pytest.fail(
            f"{name} is not set: run these tests through "
            "`cargo test -p spire-e2e --test conformance`, which starts an agent and sets it"
        )
    return value


@dataclass(frozen=True)
class Setup:
    """What the Rust harness registered for this workload."""

    trust_domain: TrustDomain
    spiffe_id: SpiffeId
    second_spiffe_id: SpiffeId


@pytest.fixture(scope="session")
def setup() -> Setup:
    _env("SPIFFE_ENDPOINT_SOCKET")
    return Setup(
        trust_domain=TrustDomain(_env("CONFORMANCE_TRUST_DOMAIN")),
        spiffe_id=SpiffeId(_env("CONFORMANCE_SPIFFE_ID")),
        second_spiffe_id=SpiffeId(_env("CONFORMANCE_SECOND_SPIFFE_ID")),
    )


def new_client() -> WorkloadApiClient:
    """py-spiffe's Workload API client exactly as a user builds it (SPIFFE_ENDPOINT_SOCKET)."""
    return WorkloadApiClient(default_timeout=30)


@pytest.fixture()
def client(setup: Setup):
    with new_client() as c:
        yield c
