"""The firewall on a lab host with IPv6 in every list: each address family in its own nft set.

An IPv6 element in an ``ipv4_addr`` set makes nft refuse the whole ruleset; this loads one that
holds both families (egress allowlist, resolvers, NTP servers, ULA cluster ranges) for real.
"""

from __future__ import annotations

import pytest

from components.execution.ssh import HostSession, HostTarget, run_step
from components.lab.inventory import LabHost
from components.plan.host_steps import render_host_steps
from tests.integration.conftest import apt_mirror_ranges
from tests.lab_stacks import ROOT, stack_for

pytestmark = pytest.mark.integration


def test_firewall_loads_ipv6_entries_into_ipv6_sets(lab_host: LabHost) -> None:
    base = stack_for([lab_host])
    session = HostSession(HostTarget.from_spec(base.hosts[0], ROOT), base.ssh)
    residency = base.residency.model_copy(
        update={
            "egress_allowlist": ("10.0.2.3/32", "2001:db8:42::/48", *apt_mirror_ranges(session)),
            "dns_resolvers": ("10.0.2.3", "2001:db8::53"),
            "ntp_servers": ("10.0.2.2", "2001:db8::123"),
        }
    )
    k3s = base.k3s.model_copy(
        update={"cluster_cidr": "fd00:42::/56", "service_cidr": "fd00:43::/112"}
    )
    stack = base.model_copy(update={"residency": residency, "k3s": k3s})
    host = stack.hosts[0]
    (firewall,) = render_host_steps(stack, host, only=("60-firewall",))
    try:
        assert run_step(session, firewall.name, firewall.script, env=firewall.env).result == (
            "changed"
        )
        sets = session.run_script(
            "for s in egress_allowed egress_allowed6 cluster_networks cluster_networks6; do\n"
            '  echo "== $s"; nft list set inet sovereign "$s"\n'
            "done\n"
            'echo "== output"; nft list chain inet sovereign output\n',
            timeout=60,
        ).stdout
        sections = {part.split("\n", 1)[0].strip(): part for part in sets.split("== ")[1:]}
        assert "2001:db8:42::/48" in sections["egress_allowed6"]
        assert "2001:db8::53" in sections["egress_allowed6"]
        assert "2001:db8" not in sections["egress_allowed"]
        assert "10.0.2.3" in sections["egress_allowed"]
        assert "fd00:42::/56" in sections["cluster_networks6"]
        assert "fd00" not in sections["cluster_networks"]
        assert "2001:db8::123" in sections["output"]  # the NTP rule of the IPv6 family
        # a second run finds the loaded table as rendered
        assert (
            run_step(session, firewall.name, firewall.script, env=firewall.env).result
            == "unchanged"
        )
    finally:
        session.close()
