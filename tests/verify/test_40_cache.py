"""Layer 4, NVMe weight cache: mounted with noatime, persistent by UUID, the array whole, and reading at least ``cache.minReadMibPerSecond`` with direct I/O.

One test per planned check of this layer (see conftest), judged by ``sovereign verify``'s code."""

import pytest

from components.verification.runner import Verification
from tests.verify.conftest import assert_check

pytestmark = pytest.mark.verify
LAYER = "cache"


def test_check(verification: Verification, host_name: str, check_id: str) -> None:
    assert_check(verification, host_name, check_id)
