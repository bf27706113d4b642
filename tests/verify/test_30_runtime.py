"""Layer 3, container runtime: NVIDIA container toolkit at its pin, CDI spec present."""

import pytest

from components.verification.runner import Verification
from tests.verify.conftest import assert_layer

pytestmark = pytest.mark.verify


def test_runtime(verification: Verification, host_name: str) -> None:
    assert_layer(verification, "runtime", host_name)
