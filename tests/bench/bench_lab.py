"""Benchmark the lab: image build from nothing, template boot, fresh host to SSH, 4 hosts at once.

    .venv/bin/python tests/bench/bench_lab.py [--runs 5] [--build-runs 3] [--skip-build]

Each measurement is repeated and reported as median, min and max seconds. Image builds go to a
scratch cache (the real cache is left alone); template boots reuse the cached image; host starts
reuse the cached template, each from a fresh lab directory.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from components.lab.accel import detect_accel
from components.lab.hosts import host_requests, start_hosts, stop_hosts
from components.lab.image import LabImage, default_recipe_dir, ensure_image
from components.lab.settings import GuestShape, LabTimeouts, resolve_cache_dir
from components.lab.template import ensure_template, prepare_template

BENCH_BASE_PORT = 2400
PARALLEL_HOSTS = 4
NVME_PER_HOST = 2
NVME_SIZE_BYTES = 2 << 30
IMAGE_FILES = (
    "vmlinuz",
    "initrd.img",
    "base.qcow2",
    "bootstrap_ed25519",
    "template_host_ed25519_key.pub",
)


def measure(runs: int, prepare: Callable[[], object], action: Callable[[], object]) -> list[float]:
    """Seconds taken by ``action`` in each of ``runs`` runs; ``prepare`` is not timed."""
    samples = []
    for run in range(runs):
        prepare()
        started = time.monotonic()
        action()
        samples.append(time.monotonic() - started)
        print(f"  run {run + 1}/{runs}: {samples[-1]:.2f}s", file=sys.stderr, flush=True)
    return samples


def bench_image_build(runs: int, scratch: Path) -> list[float]:
    cache = scratch / "build-cache"

    def clean() -> None:
        shutil.rmtree(cache, ignore_errors=True)

    samples = measure(
        runs, clean, lambda: ensure_image(cache, default_recipe_dir(), LabTimeouts().image_build_s)
    )
    clean()
    return samples


def bench_template_boot(runs: int, image: LabImage, scratch: Path) -> list[float]:
    """Boot and save a template from the cached image, in a scratch copy of the image directory."""
    copy = LabImage(scratch / "image-copy", image.recipe_hash)

    def fresh_copy() -> None:
        shutil.rmtree(copy.directory, ignore_errors=True)
        copy.directory.mkdir(parents=True)
        for name in IMAGE_FILES:
            (copy.directory / name).symlink_to(image.directory / name)

    samples = measure(
        runs,
        fresh_copy,
        lambda: ensure_template(copy, GuestShape(), detect_accel(), LabTimeouts()),
    )
    shutil.rmtree(copy.directory, ignore_errors=True)
    return samples


def bench_hosts(runs: int, count: int, scratch: Path) -> list[float]:
    timeouts = LabTimeouts()
    template = prepare_template(
        resolve_cache_dir(None), default_recipe_dir(), GuestShape(), timeouts
    )
    lab_dir = scratch / f"lab-{count}"
    requests = host_requests(count, NVME_PER_HOST, NVME_SIZE_BYTES, BENCH_BASE_PORT)

    def clean() -> None:
        stop_hosts(lab_dir, None, timeouts)

    try:
        return measure(
            runs,
            clean,
            lambda: start_hosts(lab_dir, template, requests, timeouts, die_with_parent=True),
        )
    finally:
        clean()


def summary_row(label: str, samples: list[float]) -> str:
    if not samples:
        return f"{label:<34} {'skipped':>8}"
    return (
        f"{label:<34} {statistics.median(samples):>8.2f} {min(samples):>8.2f} "
        f"{max(samples):>8.2f} {len(samples):>5}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs for host starts")
    parser.add_argument("--template-runs", type=int, default=3, help="runs for template boots")
    parser.add_argument("--build-runs", type=int, default=3, help="runs for image builds")
    parser.add_argument("--skip-build", action="store_true", help="do not time image builds")
    args = parser.parse_args()

    results: list[tuple[str, list[float]]] = []
    with tempfile.TemporaryDirectory(prefix="lab-bench-") as scratch_name:
        scratch = Path(scratch_name)
        build_runs = 0 if args.skip_build else args.build_runs
        print("image build from nothing", file=sys.stderr)
        results.append(("image build from nothing", bench_image_build(build_runs, scratch)))
        image = ensure_image(
            resolve_cache_dir(None), default_recipe_dir(), LabTimeouts().image_build_s
        )
        print("template boot and save", file=sys.stderr)
        results.append(
            ("template boot and save", bench_template_boot(args.template_runs, image, scratch))
        )
        print("fresh host to SSH", file=sys.stderr)
        results.append(("fresh host to SSH", bench_hosts(args.runs, 1, scratch)))
        print(f"{PARALLEL_HOSTS} hosts in parallel to SSH", file=sys.stderr)
        results.append(
            (
                f"{PARALLEL_HOSTS} hosts in parallel to SSH",
                bench_hosts(args.runs, PARALLEL_HOSTS, scratch),
            )
        )

    print(f"accelerator: {detect_accel().value}; guest: {GuestShape()}")
    print(f"{'measurement (seconds)':<34} {'median':>8} {'min':>8} {'max':>8} {'runs':>5}")
    for label, samples in results:
        print(summary_row(label, samples))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
