"""Layer 4, NVMe weight cache: mounted by UUID, noatime, persistent, the array whole, and reading
at least ``cache.minReadMibPerSecond`` with direct I/O."""

import pytest
import testinfra.host

from components.config.models import StackConfig
from components.verification.runner import Verification
from tests.verify.conftest import assert_layer

pytestmark = pytest.mark.verify


def test_cache(verification: Verification, host_name: str) -> None:
    assert_layer(verification, "cache", host_name)


def test_cache_is_writable_by_root(host: testinfra.host.Host, stack: StackConfig) -> None:
    mount = host.mount_point(stack.cache.mount_point)
    if not mount.exists:
        pytest.fail(f"[cache] {stack.cache.mount_point} is not a mount point", pytrace=False)
    assert mount.filesystem == stack.cache.filesystem
    probe = host.run(
        "touch %s/.sovereign-verify && rm -f %s/.sovereign-verify",
        stack.cache.mount_point,
        stack.cache.mount_point,
    )
    assert probe.rc == 0, f"[cache] {stack.cache.mount_point} is not writable: {probe.stderr}"
