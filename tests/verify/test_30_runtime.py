"""Layer 3, container runtime: NVIDIA container toolkit at its pin, CDI spec, no NVIDIA default runtime.

One test per planned check of this layer (see conftest), judged by ``sovereign verify``'s code."""

import pytest

from components.verification.runner import Verification
from tests.verify.conftest import assert_check

pytestmark = pytest.mark.verify
LAYER = "runtime"


def test_check(verification: Verification, host_name: str, check_id: str) -> None:
    assert_check(verification, host_name, check_id)
