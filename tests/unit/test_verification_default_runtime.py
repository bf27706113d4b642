"""The runtime layer's default-runtime check: no node may run every container with NVIDIA's runtime.

The containerd config judged here is what K3s v1.31.6+k3s1 writes: its own template's runtime part
(tests/data/k3s-v1.31.6), filled in the way K3s fills it, then passed through the real fact
collector (the layers' script parts, assembled as the runner sends them) as a host would run it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from components.config import StackConfig, load_stack_file
from components.plan.checks import host_checks
from components.verification.layers import (
    K3S_CONTAINERD_TEMPLATES,
    Context,
    HostFacts,
    collector_script,
    containerd_default_runtime,
    parse_sections,
    runtime_layer,
)
from components.verification.results import Finding

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "tests" / "data" / "k3s-v1.31.6" / "containerd-config-v3-runtimes.toml.tmpl"
# What K3s registers when the NVIDIA container toolkit's binaries are on the host
# (k3s pkg/agent/containerd/runtimes.go), with the paths it found them at.
NVIDIA_RUNTIMES = {
    "nvidia": "/usr/bin/nvidia-container-runtime",
    "nvidia-cdi": "/usr/bin/nvidia-container-runtime.cdi",
}
REGISTRY_PASSWORD = "registry-password-never-collected-7c1e"


def k3s_containerd_config(default_runtime: str | None) -> str:
    """The template's text filled as K3s fills it: ``--default-runtime`` (or none), systemd
    cgroups, and the NVIDIA runtimes it found. Only the constructs this excerpt uses are
    handled; any left unfilled fails the test, so a changed excerpt cannot pass silently."""
    text = TEMPLATE.read_text().replace("{{ .Program }}", "k3s")
    text = text.replace("{{ .SystemdCgroup }}", "true")
    ranged = re.search(r"\{\{ range \$k, \$v := \.ExtraRuntimes \}\}(.*)\{\{ end \}\}", text, re.S)
    assert ranged is not None
    entries = []
    for name, binary in sorted(NVIDIA_RUNTIMES.items()):
        body = ranged.group(1).replace("{{ $k }}", name)
        body = body.replace("{{$v.RuntimeType}}", "io.containerd.runc.v2")
        body = re.sub(
            r"\{\{ with \$v\.BinaryName\}\}(.*?)\{\{ end \}\}",
            lambda m, b=binary: (
                m.group(1)
                .replace('{{ printf "%q" . }}', json.dumps(b))
                .replace("{{ $.SystemdCgroup }}", "true")
            ),
            body,
            flags=re.S,
        )
        entries.append(body)
    text = text[: ranged.start()] + "".join(entries) + text[ranged.end() :]
    text = re.sub(
        r"\{\{ with \.NodeConfig\.DefaultRuntime \}\}(.*?)\{\{ end \}\}",
        lambda m: m.group(1).replace("{{ . }}", default_runtime) if default_runtime else "",
        text,
        flags=re.S,
    )
    assert "{{" not in text, text
    return text


@pytest.fixture(scope="module")
def prod() -> StackConfig:
    return load_stack_file(ROOT / "stacks" / "Pulumi.prod-fra.yaml")


def judge(config: StackConfig, sections: dict[str, str]) -> Finding:
    host = next(h for h in config.hosts if h.gpu.count)
    facts = HostFacts(host.name, {**sections, "end": ""})
    return next(
        r for r in runtime_layer(Context(config, host, facts, None)) if r.check == "default-runtime"
    )


def collect(tmp_path: Path, files: dict[str, str]) -> dict[str, str]:
    """Run the real fact collector with K3s's containerd directory at ``tmp_path``."""
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = {
        **os.environ,
        "CACHE_MOUNT_POINT": str(tmp_path / "no-cache"),
        "PROBE_DIR": str(tmp_path / "no-probe"),
        "CANARY": "",
        "K3S_CONTAINERD_DIR": str(tmp_path),
        "K3S_CONTAINERD_TEMPLATES": " ".join(K3S_CONTAINERD_TEMPLATES),
    }
    collector = tmp_path / "collect.sh"
    collector.write_text(collector_script())
    done = subprocess.run(
        ["bash", str(collector)], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    return parse_sections(done.stdout)


def test_k3s_default_config_has_no_default_runtime_and_passes(prod: StackConfig) -> None:
    config = k3s_containerd_config(None)
    assert containerd_default_runtime(config) is None
    result = judge(prod, {"containerd_config": config})
    assert result.status == "pass"
    assert result.observed == "runc (containerd's default) in config.toml"


def test_default_runtime_nvidia_fails(prod: StackConfig) -> None:
    config = k3s_containerd_config("nvidia")
    assert containerd_default_runtime(config) == "nvidia"
    result = judge(prod, {"containerd_config": config})
    assert result.status == "fail"
    assert result.observed == "nvidia in config.toml"
    assert result.message().startswith("[runtime] ")


def test_any_nvidia_runtime_as_the_default_fails(prod: StackConfig) -> None:
    result = judge(prod, {"containerd_config": k3s_containerd_config("nvidia-cdi")})
    assert (result.status, result.observed) == ("fail", "nvidia-cdi in config.toml")


def test_a_version_2_override_template_naming_nvidia_fails(prod: StackConfig) -> None:
    # containerd 1.x's table, as a config.toml.tmpl written for K3s before v1.31.6 sets it
    v2 = '\nversion = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n  default_runtime_name = "nvidia"\n'
    assert containerd_default_runtime(v2) == "nvidia"
    sections = {
        "containerd_config": k3s_containerd_config(None),
        "containerd_templates": "template /var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl\n"
        '  default_runtime_name = "nvidia"',
    }
    result = judge(prod, sections)
    assert result.status == "fail"
    assert "config.toml.tmpl" in result.observed


def test_a_template_that_leaves_the_default_to_k3s_passes(prod: StackConfig) -> None:
    sections = {
        "containerd_config": k3s_containerd_config(None),
        "containerd_templates": 'template /x/config-v3.toml.tmpl\n  default_runtime_name = "{{ . }}"',
    }
    assert judge(prod, sections).status == "pass"


def test_k3s_told_to_default_to_nvidia_fails_before_its_next_restart(prod: StackConfig) -> None:
    sections = {
        "containerd_config": k3s_containerd_config(None),
        "k3s_default_runtime": "default-runtime: nvidia",
    }
    result = judge(prod, sections)
    assert result.status == "fail"
    assert result.observed == "nvidia in /etc/rancher/k3s/config.yaml"


def test_unreadable_config_fails_and_no_k3s_skips(prod: StackConfig) -> None:
    assert judge(prod, {"containerd_config": "[plugins\n"}).observed == "config.toml is not TOML"
    assert judge(prod, {}).status == "skip"
    no_k3s = prod.model_copy(update={"k3s": prod.k3s.model_copy(update={"install": False})})
    assert judge(no_k3s, {"containerd_config": k3s_containerd_config("nvidia")}).status == "skip"


def test_the_collector_reads_the_default_runtime_and_never_the_registry_credentials(
    prod: StackConfig, tmp_path: Path
) -> None:
    credentials = (
        "\n[plugins.'io.containerd.cri.v1.images'.registry.configs.'registry.example.eu'.auth]\n"
        f'  username = "pull"\n  password = "{REGISTRY_PASSWORD}"\n'
    )
    sections = collect(
        tmp_path,
        {
            "config.toml": k3s_containerd_config("nvidia") + credentials,
            "config-v3.toml.tmpl": '{{ template "base" . }}\n',
        },
    )
    assert REGISTRY_PASSWORD not in json.dumps(sections)
    assert sections["containerd_templates"] == f"template {tmp_path}/config-v3.toml.tmpl"
    result = judge(prod, sections)
    assert (result.status, result.observed) == ("fail", "nvidia in config.toml")
    clean = collect(tmp_path, {"config.toml": k3s_containerd_config(None) + credentials})
    assert judge(prod, clean).status == "pass"


def test_the_plan_lists_the_check_verification_runs(prod: StackConfig) -> None:
    host = next(h for h in prod.hosts if h.gpu.count)
    planned = {c.id: c.expected for c in host_checks(prod, host)}
    result = judge(prod, {"containerd_config": k3s_containerd_config(None)})
    assert planned[f"{result.layer}.{result.check}"] == result.expected
