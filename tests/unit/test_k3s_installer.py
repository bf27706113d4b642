"""The K3s installer is fetched at the pinned release, so its pinned sha256 keeps holding."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from components.config import load_stack_file
from components.plan.host_steps import k3s_installer_url, render_host_steps

ROOT = Path(__file__).resolve().parents[2]
STACKS = ("staging", "prod-fra")


def test_installer_url_is_install_sh_at_the_release_tag() -> None:
    assert k3s_installer_url("v1.31.6+k3s1") == (
        "https://raw.githubusercontent.com/k3s-io/k3s/v1.31.6%2Bk3s1/install.sh"
    )


@pytest.mark.parametrize("name", STACKS)
def test_k3s_step_fetches_the_installer_of_the_pinned_version(name: str) -> None:
    config = load_stack_file(ROOT / "stacks" / f"Pulumi.{name}.yaml")
    assert config.k3s.install
    for host in config.hosts:
        (step,) = render_host_steps(config, host, only=("50-k3s",))
        (url,) = re.findall(r"^INSTALLER_URL=(\S+)$", step.script, re.M)
        assert url == k3s_installer_url(config.k3s.version)
        assert "get.k3s.io" not in step.script
        # the URL is what the download uses, and the sha256 check follows it
        download = step.script.index('"$INSTALLER_URL"')
        assert step.script.index("sha256sum --check", download) > download
