"""Layer 7, residency: declared country and labels, addresses, DNS, NTP, registries, firewall.

One test per planned check of this layer (see conftest), judged by ``sovereign verify``'s code."""

import pytest

from components.verification.runner import Verification
from tests.verify.conftest import assert_check

pytestmark = pytest.mark.verify
LAYER = "residency"


def test_check(verification: Verification, host_name: str, check_id: str) -> None:
    assert_check(verification, host_name, check_id)
