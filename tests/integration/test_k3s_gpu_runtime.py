"""On a host the stack gives GPUs, the K3s step leaves containerd without a default nvidia runtime.

K3s writes ``default_runtime_name`` into containerd's config only from its ``default-runtime``
setting (its template is in tests/data/k3s-v1.31.6); the K3s config this step writes on a lab
host declared with a GPU must not carry that setting. The lab has no GPU and no K3s download, so
the host is declared with one and K3s comes from the stand-in air-gap bundle.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import yaml

from components.config.models import StackConfig
from components.execution.ssh import HostSession, HostTarget
from components.lab.inventory import LabHost
from components.plan.cluster import GPU_COUNT_LABEL
from components.plan.host_steps import render_host_steps
from components.rollout import apply_stack
from tests.integration.test_k3s_secrets import BUNDLE, FAKE_K3S, INSTALLER, k3s_stack, on_host
from tests.lab_stacks import ROOT, lab_host_spec

pytestmark = pytest.mark.integration

K3S_CONFIG = "/etc/rancher/k3s/config.yaml"


def test_k3s_config_on_a_gpu_host_has_no_default_nvidia_runtime(lab_host: LabHost) -> None:
    host = lab_host_spec(lab_host, gpus=1)
    config: StackConfig = k3s_stack(host, hashlib.sha256(INSTALLER).hexdigest())
    session = HostSession(HostTarget.from_spec(host, ROOT), config.ssh)
    try:
        on_host(
            session,
            f'set -e\nmkdir -p {BUNDLE}\ncd "$SOVEREIGN_PAYLOAD_DIR"\n'
            f"install -m 0644 install.sh k3s-airgap-images-amd64.tar {BUNDLE}/\n"
            f"install -m 0755 k3s {BUNDLE}/k3s\n",
            payloads={
                "install.sh": INSTALLER,
                "k3s": (FAKE_K3S / "k3s").read_bytes(),
                "k3s-airgap-images-amd64.tar": b"",
            },
        )
        token = "K10" + os.urandom(24).hex() + "::server:" + os.urandom(16).hex()
        report = apply_stack(
            config,
            ROOT,
            plans={host.name: render_host_steps(config, host, only=("50-k3s",))},
            secret_env={"K3S_TOKEN": token},
        )
        assert [s.result for s in report.steps] == ["changed"], report.steps
        written = yaml.safe_load(on_host(session, f"cat {K3S_CONFIG}\n"))
        # the config is this GPU host's, and names no default runtime
        assert f"{GPU_COUNT_LABEL}=1" in written["node-label"]
        assert "default-runtime" not in written
        assert on_host(session, "systemctl is-active k3s\n").strip() == "active"
    finally:
        session.close()
