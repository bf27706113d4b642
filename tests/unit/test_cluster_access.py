"""``ClusterAccess``: waiting for the nodes and reading the kubeconfig, over a real SSH session.

The pure judgements run on node lists and kubeconfigs shaped like K3s's; the provider runs against
the loopback sshd, with a stand-in for ``k3s kubectl`` (a shell script that answers from files the
test writes, as K3s's would while nodes join).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.execution.outcome import HostKeyMismatch
from components.providers.cluster_access import (
    ClusterAccessProvider,
    ClusterNotReady,
    KubeconfigUnreadable,
    node_readiness,
    rewrite_server_url,
)
from tests.conftest import LocalSshd

CLIENT_KEY = "LS0tLS1CRUdJTiBFQyBQUklWQVRFIEtFWS0tLS0tCnRlc3Qta2V5LW9ubHkK"


def node(name: str, ready: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": ready, "reason": "KubeletReady"},
            ]
        },
    }


def node_list(*nodes: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(nodes)})


def k3s_kubeconfig() -> str:
    # the shape K3s writes to /etc/rancher/k3s/k3s.yaml
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "clusters": [
                {
                    "cluster": {
                        "certificate-authority-data": "LS0tLS1CRUdJTi1DQQ==",
                        "server": "https://127.0.0.1:6443",
                    },
                    "name": "default",
                }
            ],
            "contexts": [{"context": {"cluster": "default", "user": "default"}, "name": "default"}],
            "current-context": "default",
            "kind": "Config",
            "preferences": {},
            "users": [
                {
                    "name": "default",
                    "user": {
                        "client-certificate-data": "LS0tQ0VSVA==",
                        "client-key-data": CLIENT_KEY,
                    },
                }
            ],
        }
    )


def test_readiness_names_missing_and_not_ready_nodes() -> None:
    seen = node_readiness(
        node_list(node("a", "True"), node("b", "False"), node("x", "True")), ["a", "b", "c"]
    )
    assert seen.ready == ("a",)
    assert seen.not_ready == ("b",)
    assert seen.missing == ("c",)
    assert not seen.complete
    assert seen.describe() == "not registered: c; registered but not Ready: b"
    assert node_readiness(node_list(node("a", "True")), ["a"]).complete
    # an Unknown status (a node that stopped reporting) is not Ready
    assert node_readiness(node_list(node("a", "Unknown")), ["a"]).not_ready == ("a",)
    assert node_readiness("not json", ["a"]).missing == ("a",)


def test_server_url_is_rewritten_and_nothing_else_changes() -> None:
    text = rewrite_server_url(k3s_kubeconfig(), "https://inference.fra.example.eu:6443")
    data = yaml.safe_load(text)
    original = yaml.safe_load(k3s_kubeconfig())
    assert data["clusters"][0]["cluster"]["server"] == "https://inference.fra.example.eu:6443"
    original["clusters"][0]["cluster"]["server"] = "https://inference.fra.example.eu:6443"
    assert data == original


def test_an_unreadable_kubeconfig_is_refused_without_quoting_it() -> None:
    with pytest.raises(KubeconfigUnreadable) as caught:
        rewrite_server_url(f"users: [{{client-key-data: {CLIENT_KEY}}}]", "https://x:6443")
    assert CLIENT_KEY not in str(caught.value)


class FakeK3s:
    """``k3s kubectl get nodes -o json`` and the kubeconfig, as files the provider reads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.answers = root / "answers"
        self.answers.mkdir()
        self.calls = root / "calls"
        self.kubectl = root / "kubectl"
        # each call answers with the next file in order, then keeps the last one
        self.kubectl.write_text(
            "#!/bin/sh\n"
            f'echo call >> "{self.calls}"\n'
            f'n=$(wc -l < "{self.calls}")\n'
            f'f="{self.answers}/$n.json"\n'
            f'[ -f "$f" ] || f=$(ls "{self.answers}"/*.json | sort -n -t/ | tail -n 1)\n'
            'cat "$f"\n'
        )
        self.kubectl.chmod(0o755)
        self.kubeconfig = root / "k3s.yaml"
        self.kubeconfig.write_text(k3s_kubeconfig())
        self.kubeconfig.chmod(0o600)

    def answer(self, *lists: str) -> None:
        for i, text in enumerate(lists, start=1):
            (self.answers / f"{i}.json").write_text(text)

    def props(self, sshd: LocalSshd, **extra: Any) -> dict[str, Any]:
        return {
            "host": "fra-gpu-01",
            "address": "127.0.0.1",
            "port": sshd.port,
            "user": sshd.user,
            "privateKey": f"file:{sshd.client_keys['ed25519']}",
            "hostKey": sshd.host_key_fingerprint,
            "ssh": {"connectTimeoutSeconds": 3, "connectRetries": 1, "retryBackoffSeconds": 0},
            "nodes": ["fra-gpu-01", "fra-gpu-02"],
            "serverUrl": "https://inference.fra.example.eu:6443",
            "readyTimeoutSeconds": 20,
            "pollSeconds": 0.2,
            "kubectl": str(self.kubectl),
            "kubeconfigPath": str(self.kubeconfig),
            **extra,
        }


@pytest.fixture
def fake_k3s(tmp_path: Path) -> FakeK3s:
    return FakeK3s(tmp_path)


def test_create_waits_until_every_node_is_ready_then_reads_the_kubeconfig(
    local_sshd: LocalSshd, fake_k3s: FakeK3s
) -> None:
    fake_k3s.answer(
        node_list(node("fra-gpu-01", "True")),
        node_list(node("fra-gpu-01", "True"), node("fra-gpu-02", "False")),
        node_list(node("fra-gpu-01", "True"), node("fra-gpu-02", "True")),
    )
    props = fake_k3s.props(local_sshd)
    result = ClusterAccessProvider().create(props)
    assert result.id == "fra-gpu-01/kubeconfig"
    outs = result.outs
    assert outs is not None
    assert outs["readyNodes"] == ["fra-gpu-01", "fra-gpu-02"]
    assert len(fake_k3s.calls.read_text().splitlines()) == 3  # it polled until the third answer
    config = yaml.safe_load(outs["kubeconfig"])
    assert config["clusters"][0]["cluster"]["server"] == "https://inference.fra.example.eu:6443"
    assert config["users"][0]["user"]["client-key-data"] == CLIENT_KEY


def test_a_node_that_never_joins_is_named_when_the_wait_runs_out(
    local_sshd: LocalSshd, fake_k3s: FakeK3s, capfd: pytest.CaptureFixture[str]
) -> None:
    fake_k3s.answer(node_list(node("fra-gpu-01", "True")))
    props = fake_k3s.props(local_sshd, readyTimeoutSeconds=1, pollSeconds=0.2)
    started = time.monotonic()
    with pytest.raises(ClusterNotReady, match=r"not registered: fra-gpu-02"):
        ClusterAccessProvider().create(props)
    assert time.monotonic() - started < 10
    assert CLIENT_KEY not in capfd.readouterr().err


def test_a_host_showing_another_key_is_refused(local_sshd: LocalSshd, fake_k3s: FakeK3s) -> None:
    fake_k3s.answer(node_list(node("fra-gpu-01", "True"), node("fra-gpu-02", "True")))
    props = fake_k3s.props(local_sshd, hostKey="SHA256:" + "A" * 43)
    with pytest.raises(HostKeyMismatch):
        ClusterAccessProvider().create(props)
    assert not fake_k3s.calls.exists()


def test_refresh_reads_again_and_diff_rereads_only_on_relevant_changes(
    local_sshd: LocalSshd, fake_k3s: FakeK3s
) -> None:
    fake_k3s.answer(node_list(node("fra-gpu-01", "True"), node("fra-gpu-02", "True")))
    props = fake_k3s.props(local_sshd)
    provider = ClusterAccessProvider()
    read = provider.read("fra-gpu-01/kubeconfig", props)
    assert read.outs is not None
    assert read.outs["readyNodes"] == ["fra-gpu-01", "fra-gpu-02"]
    state = read.outs
    assert not provider.diff("id", state, {**props, "pollSeconds": 1}).changes
    assert provider.diff("id", state, {**props, "nodes": ["fra-gpu-01"]}).changes
    assert provider.diff("id", state, {**props, "serverUrl": "https://10.0.0.1:6443"}).changes
    failures = provider.check({}, {**props, "serverUrl": "http://plain:6443"}).failures
    assert [f.property for f in failures] == ["serverUrl"]


def test_refresh_does_not_wait_and_shows_a_node_gone(
    local_sshd: LocalSshd, fake_k3s: FakeK3s
) -> None:
    fake_k3s.answer(node_list(node("fra-gpu-01", "True"), node("fra-gpu-02", "False")))
    props = fake_k3s.props(local_sshd, readyTimeoutSeconds=600)
    provider = ClusterAccessProvider()
    started = time.monotonic()
    read = provider.read("fra-gpu-01/kubeconfig", props)
    assert time.monotonic() - started < 10
    assert read.outs is not None
    assert read.outs["readyNodes"] == ["fra-gpu-01"]
    # the next up sees the difference and waits for the node again
    assert provider.diff("id", read.outs, props).changes
