"""Benchmark: the whole Pulumi program under mocks for a 100-host, 10-model stack.

    .venv/bin/python tests/bench/bench_program.py --runs 3

The stack is prod-fra grown to 3 K3s servers and 97 agents (8x H100 each) serving 10 models. Each
run executes ``__main__.py`` under the same Pulumi mocks as the unit tests (Fleet, K3sCluster,
InferenceStack: every host step, the cluster read-back, every Kubernetes object and chart), and
reports the wall time and the number of resources registered. Target: at most 5 s per run on the
2-core development machine. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from components.config import load_stack_file  # noqa: E402
from components.inference_stack import InferenceStack  # noqa: E402
from components.plan.host_steps import render_host_steps  # noqa: E402
from components.plan.kubernetes import InferenceStackSpec  # noqa: E402
from tests.unit.test_program_mocks import mock_kubeconfig, run_mocked, run_program  # noqa: E402

HOSTS = 100
MODELS = 10


def big_stack(out: Path) -> Path:
    """prod-fra with ``HOSTS`` hosts (3 servers) and ``MODELS`` models."""
    data: dict[str, Any] = yaml.safe_load((ROOT / "stacks" / "Pulumi.prod-fra.yaml").read_text())
    config = data["config"]
    template = config["sovereign-inference:hosts"][0]
    hosts = []
    for i in range(HOSTS):
        host = yaml.safe_load(yaml.safe_dump(template))
        host["name"] = f"fra-gpu-{i:03d}"
        host["role"] = "server" if i < 3 else "agent"
        host["address"] = f"203.0.113.{i + 1}" if i < 254 else "203.0.113.254"
        host["egressIps"] = [host["address"]]
        digest = hashlib.sha256(f"bench-host-{i}".encode()).digest()
        host["ssh"]["hostKey"] = "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
        host["nvme"] = [
            {"id": f"nvme-SAMSUNG_MZWLO3T8HCLS-00A07_S7B0NA0W{i:03d}{d:03d}", "wipe": False}
            for d in range(4)
        ]
        hosts.append(host)
    config["sovereign-inference:hosts"] = hosts
    inference = config["sovereign-inference:inference"]
    base = inference["models"][1]
    models = []
    for i in range(MODELS):
        model = yaml.safe_load(yaml.safe_dump(base))
        model["name"] = f"model-{i}"
        model["servedName"] = f"org/model-{i}"
        models.append(model)
    inference["models"] = models
    path = out / "Pulumi.bench-fra.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def inference_alone(stack_file: Path) -> tuple[float, int]:
    """``InferenceStack`` for the same 10 models on its own, from a kubeconfig."""
    spec = InferenceStackSpec.from_stack(load_stack_file(stack_file))

    def build() -> None:
        InferenceStack("bench", spec, kubeconfig=mock_kubeconfig("https://k:6443"))

    with pytest.MonkeyPatch.context() as monkeypatch:
        started = time.perf_counter()
        run = run_mocked(
            build,
            {},
            [],
            "bench",
            monkeypatch,
            record=False,
        )
        return time.perf_counter() - started, len(run.registrations)


class _Plain(pulumi.CustomResource):
    def __init__(self, name: str) -> None:
        super().__init__("bench:anchor:Plain", name, {"value": name})


def sdk_anchor(count: int = 1000) -> float:
    """The same mocks registering ``count`` trivial resources: the SDK's own floor on this
    machine right now, to read the program's time against (the machine is shared)."""

    def build() -> None:
        for i in range(count):
            _Plain(f"plain-{i}")

    with pytest.MonkeyPatch.context() as monkeypatch:
        started = time.perf_counter()
        run_mocked(build, {}, [], "anchor", monkeypatch, record=False)
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    whole, alone, anchor = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        stack_file = big_stack(Path(tmp))
        config = load_stack_file(stack_file)
        started = time.perf_counter()
        steps = [render_host_steps(config, h) for h in config.hosts]
        render_seconds = time.perf_counter() - started
        payload = sum(len(v) for s in steps[0] for v in s.payloads.values())
        for run in range(args.runs):
            with pytest.MonkeyPatch.context() as monkeypatch:
                started = time.perf_counter()
                result = run_program(stack_file, monkeypatch, record=False)
                seconds = time.perf_counter() - started
            whole.append(seconds)
            inference_seconds, inference_resources = inference_alone(stack_file)
            alone.append(inference_seconds)
            anchor.append(sdk_anchor())
            print(
                f"run {run + 1}: program {seconds:.2f} s ({len(result.registrations)} resources, "
                f"{HOSTS} hosts, {MODELS} models); InferenceStack alone "
                f"{inference_seconds:.2f} s ({inference_resources} resources); "
                f"1000 trivial resources {anchor[-1]:.2f} s",
                flush=True,
            )
    print(
        f"median: program {statistics.median(whole):.2f} s (target <= 5 s), "
        f"InferenceStack alone {statistics.median(alone):.2f} s, "
        f"1000 trivial resources {statistics.median(anchor):.2f} s; "
        f"rendering the {sum(len(s) for s in steps)} host steps alone {render_seconds:.2f} s, "
        f"payload bytes per host {payload}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
