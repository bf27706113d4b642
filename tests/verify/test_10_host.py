"""Layer 1, host: OS, SSH hardening, time sync service."""

import pytest
import testinfra.host

from components.verification.runner import Verification
from tests.verify.conftest import assert_layer

pytestmark = pytest.mark.verify


def test_host(verification: Verification, host_name: str) -> None:
    assert_layer(verification, "host", host_name)


def test_time_sync_runs(host: testinfra.host.Host) -> None:
    chrony = host.service("chrony")
    assert chrony.is_enabled, "[host] chrony is not enabled"
    assert chrony.is_running, "[host] chrony is not running"
