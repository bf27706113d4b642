"""Lab fixtures: real QEMU guests that stand in for bare-metal hosts in integration tests.

* ``lab_template`` (session): the image and booted template, built on first use and cached across
  sessions (``sovereign lab image`` prebuilds the same cache entry).
* ``lab_hosts`` (function): a factory, ``lab_hosts(2)`` starts two fresh hosts from the template.
* ``lab_host`` (function): one fresh host, for tests that may break it.
* ``lab_port_base`` (session): where this session's hosts' ports start, for tests that run their
  own lab directory.

Hosts are :class:`~components.lab.inventory.LabHost` records, the same entries
``sovereign lab up`` writes to its inventory (name, address, port, user, private_key, host_key,
host_key_public, nvme, pid): tests reach them with their own SSH client and the pinned key.

Every guest is stopped and its overlay and NVMe images deleted when the test ends, pass or fail, and
at the end of the session. Guests are also tied to the pytest process (the kernel kills them if pytest
dies outright), and the next session sweeps anything a killed session left in the test lab directory.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from components.execution.ssh import HostSession
from components.lab.hosts import HostRequest, start_hosts, stop_hosts
from components.lab.image import DEFAULT_MIRROR, default_recipe_dir
from components.lab.inventory import LabHost, load_inventory
from components.lab.settings import GuestShape, LabTimeouts, parse_size, resolve_cache_dir
from components.lab.template import LabTemplate, prepare_template

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_LAB_DIR_ENV = "SOVEREIGN_LAB_TEST_DIR"
TEST_BASE_PORT_ENV = "SOVEREIGN_LAB_TEST_BASE_PORT"
DEFAULT_TEST_BASE_PORT = 2300
PORTS_PER_WORKER = 100
TIMEOUTS = LabTimeouts()


def _worker() -> tuple[str, int]:
    """Name and number of this pytest-xdist worker (``main``, 0 without xdist)."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "main")
    number = int(name.removeprefix("gw")) if name.startswith("gw") else 0
    return name, number


def lab_dir_for_tests() -> Path:
    worker, _ = _worker()
    base = os.environ.get(TEST_LAB_DIR_ENV) or str(REPO_ROOT / ".lab" / "pytest")
    return Path(base).absolute() / worker


def base_port_for_tests() -> int:
    _, number = _worker()
    return int(os.environ.get(TEST_BASE_PORT_ENV, DEFAULT_TEST_BASE_PORT)) + number * (
        PORTS_PER_WORKER
    )


LabHostsFactory = Callable[..., list[LabHost]]


@pytest.fixture(scope="session")
def lab_template() -> Iterator[LabTemplate]:
    """The cached image and booted template (built on first use: about 3 minutes)."""
    lab_dir = lab_dir_for_tests()
    stop_hosts(lab_dir, None, TIMEOUTS)  # whatever a killed session left behind
    template = prepare_template(
        resolve_cache_dir(None), default_recipe_dir(), GuestShape(), TIMEOUTS
    )
    yield template
    stop_hosts(lab_dir, None, TIMEOUTS)


@pytest.fixture(scope="session")
def lab_port_base() -> int:
    """Ports from here on belong to this session (host ``i`` of the shared lab gets base + i)."""
    return base_port_for_tests()


@pytest.fixture
def lab_hosts(lab_template: LabTemplate) -> Iterator[LabHostsFactory]:
    """Factory: ``lab_hosts(count, nvme=2, nvme_size="2G")`` starts fresh hosts for this test."""
    lab_dir = lab_dir_for_tests()
    started: set[str] = set()

    def start(count: int, nvme: int = 2, nvme_size: str = "2G") -> list[LabHost]:
        in_use = {host.index for host in load_inventory(lab_dir).hosts}
        indices: list[int] = []
        candidate = 1
        while len(indices) < count:
            if candidate not in in_use:
                indices.append(candidate)
            candidate += 1
        requests = [
            HostRequest(index, base_port_for_tests() + index, nvme, parse_size(nvme_size))
            for index in indices
        ]
        entries = start_hosts(lab_dir, lab_template, requests, TIMEOUTS, die_with_parent=True)
        started.update(entry.name for entry in entries)
        return entries

    try:
        yield start
    finally:
        if started:
            stop_hosts(lab_dir, started, TIMEOUTS)


@pytest.fixture
def lab_host(lab_hosts: LabHostsFactory) -> LabHost:
    """One fresh host with two 2 GiB NVMe drives; gone after the test."""
    return lab_hosts(1)[0]


def apt_mirror_ranges(session: HostSession) -> tuple[str, ...]:
    """The addresses the guest's apt mirror resolves to, as single-address ranges: the firewall
    step refuses an allowlist that leaves them out."""
    mirror = urlsplit(DEFAULT_MIRROR).hostname
    answers = session.run_script(
        f"getent ahosts {mirror} | awk '$1 !~ /^::ffff:/ {{print $1}}' | sort -u\n", timeout=60
    ).stdout.split()
    return tuple(str(ipaddress.ip_network(a)) for a in answers)
