"""Layer 2, driver and CUDA: the NVML health probe, per GPU, and the kernel's XID log.

One test per planned check of this layer (see conftest), judged by ``sovereign verify``'s code."""

import pytest

from components.verification.runner import Verification
from tests.verify.conftest import assert_check

pytestmark = pytest.mark.verify
LAYER = "driver"


def test_check(verification: Verification, host_name: str, check_id: str) -> None:
    assert_check(verification, host_name, check_id)
