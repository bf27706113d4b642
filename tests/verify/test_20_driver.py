"""Layer 2, driver and CUDA: the NVML health probe and the kernel's XID log."""

import pytest

from components.verification.runner import Verification
from tests.verify.conftest import assert_layer

pytestmark = pytest.mark.verify


def test_driver(verification: Verification, host_name: str) -> None:
    assert_layer(verification, "driver", host_name)
