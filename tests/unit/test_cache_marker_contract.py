"""The cache step and the weights tool agree on the marker that proves a directory is the mounted
cache filesystem (the tool refuses a cache without it: tests/weights/test_cache_filesystem.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from sovereign_weights.layout import CACHE_FILESYSTEM_MARKER

from components.config import load_stack_file
from components.plan.host_steps import render_host_steps
from components.plan.kubernetes import InferenceStackSpec, inference_plan
from components.plan.kubernetes.serving import WEIGHTS_COMMAND

ROOT = Path(__file__).resolve().parents[2]
SHELLCHECK = ROOT / ".venv" / "bin" / "shellcheck"
WORKLOADS = ("Deployment", "DaemonSet")


def cache_step_script() -> str:
    config = load_stack_file(ROOT / "stacks" / "Pulumi.lab.yaml")
    host = next(h for h in config.hosts if h.nvme)
    (step,) = [s for s in render_host_steps(config, host) if s.name == "40-nvme-cache"]
    return step.script


def test_the_cache_step_writes_the_marker_the_weights_tool_requires_once_mounted() -> None:
    script = cache_step_script()
    assert f"CACHE_MARKER={CACHE_FILESYSTEM_MARKER}\n" in script
    apply = re.search(r"^apply\(\) \{\n(.*?)^\}", script, re.MULTILINE | re.DOTALL)
    assert apply is not None
    calls = [line.strip() for line in apply.group(1).splitlines()]
    # written on the filesystem only after it is mounted there, never on the bare mount point
    assert calls.index("ensure_cache_marker") > calls.index("ensure_mounted")
    assert 'ensure_file "${MOUNT_POINT}/${CACHE_MARKER}"' in script


def test_the_cache_step_is_shellcheck_clean(tmp_path: Path) -> None:
    path = tmp_path / "40-nvme-cache.sh"
    path.write_text(cache_step_script())
    done = subprocess.run(
        [str(SHELLCHECK), str(path)], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stdout


def weights_tool_args(spec: InferenceStackSpec) -> list[list[str]]:
    """The arguments of every weights-tool container of the plan: init containers and warmer."""
    plan = inference_plan(spec)
    pods = [o["spec"]["template"]["spec"] for o in plan.objects() if o["kind"] in WORKLOADS]
    return [
        c["args"]
        for pod in pods
        for c in [*pod.get("initContainers", []), *pod["containers"]]
        if c.get("command") == list(WEIGHTS_COMMAND)
    ]


def test_where_the_cache_step_marked_every_gpu_cache_the_weights_tool_requires_the_marker() -> None:
    spec = InferenceStackSpec.from_stack(load_stack_file(ROOT / "stacks" / "Pulumi.prod-fra.yaml"))
    args = [a for a in weights_tool_args(spec) if a[0] in ("ensure", "prefetch")]
    assert args
    assert all("--require-cache-filesystem" in a for a in args)


def test_a_cache_the_toolkit_did_not_build_is_not_held_to_the_marker() -> None:
    stack = load_stack_file(ROOT / "stacks" / "Pulumi.prod-fra.yaml")
    built = InferenceStackSpec.from_stack(stack)
    # the README's "cluster built elsewhere": a spec by hand, whose nodes no cache step touched
    elsewhere = InferenceStackSpec(
        environment=built.environment, inference=built.inference, residency=built.residency
    )
    args = weights_tool_args(elsewhere)
    assert args
    assert not any("--require-cache-filesystem" in a for a in args)
