"""Layer 5, K3s: pinned version, node Ready."""

import pytest

from components.verification.runner import Verification
from tests.verify.conftest import assert_layer

pytestmark = pytest.mark.verify


def test_k3s(verification: Verification, host_name: str) -> None:
    assert_layer(verification, "k3s", host_name)
