"""Benchmark: rollout (first run, no-op re-run) and verify on 1, 2 and 4 lab hosts.

    .venv/bin/python tests/bench/bench_fleet.py --runs 3

Each run starts fresh lab hosts from the template, rolls out every step that runs in the lab
(preflight, base, NVMe cache, firewall, probe environment) with ``apply_stack``, runs it again
(nothing to change), then verifies the hosts. Medians per fleet size, and each size's ratio to the
one-host anchor measured in the same invocation. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from components.lab.hosts import HostRequest, start_hosts, stop_hosts  # noqa: E402
from components.lab.image import default_recipe_dir  # noqa: E402
from components.lab.settings import GuestShape, LabTimeouts, parse_size, resolve_cache_dir  # noqa: E402
from components.lab.template import LabTemplate, prepare_template  # noqa: E402
from components.plan.host_steps import render_host_steps  # noqa: E402
from components.rollout import apply_stack  # noqa: E402
from components.verification.runner import verify_stack  # noqa: E402
from tests.lab_stacks import LAB_STEPS, stack_for  # noqa: E402

BASE_PORT = 2600


def guest_cpu_seconds(pids: list[int]) -> float:
    """CPU time the guests' QEMU processes have used (user + system), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def one_run(template: LabTemplate, lab_dir: Path, size: int) -> dict[str, float]:
    timeouts = LabTimeouts()
    requests = [HostRequest(i, BASE_PORT + i, 2, parse_size("2G")) for i in range(1, size + 1)]
    entries = start_hosts(lab_dir, template, requests, timeouts, die_with_parent=True)
    try:
        stack = stack_for(entries)
        plans = {h.name: render_host_steps(stack, h, only=LAB_STEPS) for h in stack.hosts}
        timings = {}
        pids = [e.pid for e in entries]
        for label in ("first", "noop"):
            cpu_before = guest_cpu_seconds(pids)
            report = apply_stack(stack, ROOT, plans=plans)
            timings[f"{label}-guest-cpu"] = guest_cpu_seconds(pids) - cpu_before
            if report.failed:
                raise SystemExit(f"rollout failed: {[s.error for s in report.failed]}")
            if label == "noop" and report.changed:
                raise SystemExit(
                    f"no-op re-run changed: {[(s.host, s.step) for s in report.changed]}"
                )
            timings[label] = report.seconds
        started = time.monotonic()
        verification = verify_stack(stack, ROOT)
        timings["verify"] = time.monotonic() - started
        if verification.failed:
            raise SystemExit(f"verify failed: {[r.message() for r in verification.failed]}")
        return timings
    finally:
        stop_hosts(lab_dir, {e.name for e in entries}, timeouts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="1,2,4")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    template = prepare_template(
        resolve_cache_dir(None), default_recipe_dir(), GuestShape(), LabTimeouts()
    )
    keys = ("first", "noop", "verify", "first-guest-cpu", "noop-guest-cpu")
    results: dict[int, dict[str, list[float]]] = {s: {k: [] for k in keys} for s in sizes}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-", dir=ROOT / ".lab") as tmp:
        for run in range(args.runs):
            for size in sizes:
                timings = one_run(template, Path(tmp), size)
                for key, value in timings.items():
                    results[size][key].append(value)
                print(
                    f"run {run + 1} hosts {size}: "
                    + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()),
                    flush=True,
                )
    anchor = {k: statistics.median(v) for k, v in results[sizes[0]].items()}
    print(f"\nmedians of {args.runs} run(s); ratio to {sizes[0]} host(s) in the same invocation")
    print(f"{'hosts':>5} {'first run':>16} {'no-op re-run':>16} {'verify':>16}")
    for size in sizes:
        cells = []
        for key in ("first", "noop", "verify"):
            median = statistics.median(results[size][key])
            cells.append(f"{median:6.1f}s ({median / anchor[key]:.2f}x)")
        print(f"{size:>5} {cells[0]:>16} {cells[1]:>16} {cells[2]:>16}")
    cores = os.cpu_count() or 1
    print(f"\nguest CPU during the no-op re-run (QEMU user+system time; {cores} cores here)")
    for size in sizes:
        cpu = statistics.median(results[size]["noop-guest-cpu"])
        wall = statistics.median(results[size]["noop"])
        print(
            f"{size:>5} hosts: {cpu:6.1f} CPU-s in {wall:5.1f} s wall = {cpu / wall:.2f} cores busy"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
