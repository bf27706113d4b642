"""Layer 7, residency: declared country and labels, egress IPs, DNS, NTP, registries, firewall."""

import pytest

from components.verification.runner import Verification
from tests.verify.conftest import assert_layer

pytestmark = pytest.mark.verify


def test_residency(verification: Verification, host_name: str) -> None:
    assert_layer(verification, "residency", host_name)
