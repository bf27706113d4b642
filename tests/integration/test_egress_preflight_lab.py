"""On a lab host, the firewall step refuses an egress allowlist that leaves out what the host needs,
names each destination and address, and loads nothing; once the allowlist covers them it loads.

The host's own resolver answers (``getent`` reads /etc/hosts first), with entries this test
writes for the lab stack's registry and object store and for the apt mirror in the guest's
sources, so the answers are known here.
"""

from __future__ import annotations

import pytest

from components.config.models import StackConfig
from components.execution.outcome import StepRefused
from components.execution.ssh import HostSession, HostTarget, run_step
from components.lab.inventory import LabHost
from components.plan.host_steps import egress_destinations, render_host_steps
from tests.lab_stacks import ROOT, stack_for

pytestmark = pytest.mark.integration

HOSTS_ENTRIES = {
    "registry.lab.internal": "10.0.2.99",
    "objects.lab.internal": "10.0.2.3",
    "deb.debian.org": "10.0.2.98",
}


def with_allowlist(base: StackConfig, allowlist: tuple[str, ...]) -> StackConfig:
    residency = base.residency.model_copy(update={"egress_allowlist": allowlist})
    return base.model_copy(update={"residency": residency})


def test_firewall_refuses_an_allowlist_that_cuts_off_the_hosts_destinations(
    lab_host: LabHost,
) -> None:
    base = stack_for([lab_host])
    assert egress_destinations(base) == ["registry.lab.internal", "objects.lab.internal"]
    session = HostSession(HostTarget.from_spec(base.hosts[0], ROOT), base.ssh)
    try:
        # these answers replace whatever the lab network's resolver gives for the names
        entries = "".join(
            f"sed -i '/[[:space:]]{n}$/d' /etc/hosts\necho '{a} {n}' >>/etc/hosts\n"
            for n, a in HOSTS_ENTRIES.items()
        )
        prepared = session.run_script(
            entries + "cat /etc/apt/sources.list\ngetent ahosts deb.debian.org\n", timeout=60
        )
        assert prepared.exit_status == 0, prepared.stderr_tail
        assert "http://deb.debian.org/" in prepared.stdout, "the lab image's apt mirror"
        assert "10.0.2.98" in prepared.stdout, "/etc/hosts answers for the mirror"

        narrow = with_allowlist(base, ("10.0.2.3/32",))
        (firewall,) = render_host_steps(narrow, narrow.hosts[0], only=("60-firewall",))
        with pytest.raises(StepRefused) as refused:
            run_step(session, firewall.name, firewall.script, env=firewall.env)
        message = str(refused.value)
        assert "registry.lab.internal (10.0.2.99)" in message
        assert "deb.debian.org (10.0.2.98)" in message
        assert "objects.lab.internal" not in message
        nothing = session.run_script("nft list table inet sovereign\n", timeout=60)
        assert nothing.exit_status != 0, "no rules were loaded"

        covering = with_allowlist(base, ("10.0.2.0/24",))
        (firewall,) = render_host_steps(covering, covering.hosts[0], only=("60-firewall",))
        assert (
            run_step(session, firewall.name, firewall.script, env=firewall.env).result == "changed"
        )
        assert (
            session.run_script("nft list chain inet sovereign output\n", timeout=60).exit_status
            == 0
        )
    finally:
        session.close()
