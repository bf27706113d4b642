"""Benchmark: warm throughput to local disk, beside boto3's transfer manager (``download_file``).

    .venv/bin/python tests/bench/bench_weights.py [--files 2] [--file-mib 256] [--rounds 3]

One moto S3 server on loopback holds a model of ``--files`` safetensors files, published with
``sovereign-weights publish``. In the same run, on the same machine and files, each round:

- ``sovereign-weights ensure`` (in process: ranged GETs in parallel, progress records, sha256
  verification, fsync and the atomic rename) into an empty cache directory;
- boto3's ``download_file`` with its default ``TransferConfig`` (8 MiB ranged parts, 10 threads),
  file after file, into an empty directory, with no verification;
- the same ``download_file`` followed by a sha256 of each file, the fair comparison with a
  warmer that verifies.

Rounds alternate the order; the median of each is reported in MiB/s of file bytes. Page cache:
every destination is new, so writes are buffered alike; reads come from moto's memory. Not a
test: it asserts nothing. The GPU part of the issue (NVMe to VRAM) needs a GPU machine.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig
from sovereign_weights.layout import CACHE_FILESYSTEM_MARKER, parse_object_uri
from sovereign_weights.report import Reporter
from sovereign_weights.store import StoreSettings, make_client
from sovereign_weights.warm import Target, Warmer, WarmSettings

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.loopback import free_port, wait_for_listener  # noqa: E402

MiB = 1024 * 1024
REVISION = "bench"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "eu-central-1",
}


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    moto = Path(sys.executable).parent / "moto_server"
    port = free_port()
    process = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if not wait_for_listener(process, port, timeout=30, interval=0.1):
        process.kill()
        raise RuntimeError(f"moto_server did not listen on 127.0.0.1:{port}")
    return process, f"http://127.0.0.1:{port}"


def write_model(directory: Path, files: int, file_mib: int) -> None:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text('{"torch_dtype": "bfloat16"}')
    size = file_mib * MiB
    for i in range(1, files + 1):
        header = json.dumps(
            {"w": {"dtype": "BF16", "shape": [size // 2], "data_offsets": [0, size]}}
        )
        raw = header.encode() + b" " * (-len(header) % 8)
        with (directory / f"model-{i:05d}-of-{files:05d}.safetensors").open("wb") as handle:
            handle.write(len(raw).to_bytes(8, "little") + raw)
            for _ in range(file_mib):
                handle.write(os.urandom(MiB))


def warm_once(endpoint: str, uri: str, cache: Path, jobs: int, part_mib: int) -> float:
    target = Target("bench", parse_object_uri(uri), REVISION)
    settings = WarmSettings(jobs=jobs, part_bytes=part_mib * MiB)
    warmer = Warmer(
        target,
        cache,
        lambda: make_client(StoreSettings(endpoint=endpoint, max_connections=jobs * 2)),
        settings,
        Reporter("ensure", stream=io.StringIO(), tty=False),
    )
    started = time.perf_counter()
    result = warmer.ensure()
    assert result.outcome == "fetched"
    return time.perf_counter() - started


def download_file_once(
    endpoint: str, bucket: str, keys: list[str], out: Path, *, verify: bool
) -> float:
    client = boto3.client("s3", endpoint_url=endpoint)
    config = TransferConfig()  # the transfer manager's defaults
    started = time.perf_counter()
    for key in keys:
        destination = out / key.rsplit("/", 1)[-1]
        client.download_file(bucket, key, str(destination), Config=config)
        if verify:
            digest = hashlib.sha256()
            with destination.open("rb") as handle:
                while chunk := handle.read(8 * MiB):
                    digest.update(chunk)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--file-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--part-mib", type=int, default=64, help="the warmer's ranged part size")
    parser.add_argument("--work", type=Path, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)

    work = Path(tempfile.mkdtemp(prefix="bench-weights-", dir=args.work))
    moto, endpoint = start_moto()
    try:
        bucket = "bench-weights"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"}
        )
        model = work / "model"
        write_model(model, args.files, args.file_mib)
        uri = f"s3://{bucket}/bench/model"
        subprocess.run(
            [sys.executable, "-m", "sovereign_weights", "publish", str(model), "--endpoint",
             endpoint, "--uri", uri, "--revision", REVISION],
            check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        location = parse_object_uri(uri)
        keys = [location.object_key(REVISION, p.name) for p in sorted(model.iterdir())]
        total = sum(p.stat().st_size for p in model.iterdir())

        times: dict[str, list[float]] = {
            "warmer": [],
            "download_file": [],
            "download_file+sha256": [],
        }
        for round_ in range(args.rounds):
            order = list(times) if round_ % 2 == 0 else list(reversed(times))
            for tool in order:
                out = work / f"{tool}-{round_}"
                out.mkdir()
                if tool == "warmer":
                    # what the cache step writes on the filesystem it mounted
                    (out / CACHE_FILESYSTEM_MARKER).write_text("label=bench\n")
                    seconds = warm_once(endpoint, uri, out, args.jobs, args.part_mib)
                else:
                    seconds = download_file_once(
                        endpoint, bucket, keys, out, verify=tool.endswith("sha256")
                    )
                times[tool].append(seconds)
                shutil.rmtree(out)
        print(
            f"{args.files} file(s) x {args.file_mib} MiB ({total / MiB:.0f} MiB), moto on loopback, "
            f"{args.rounds} round(s), {os.cpu_count()} CPU(s), warmer parts of {args.part_mib} MiB"
        )
        for tool, samples in times.items():
            median = statistics.median(samples)
            print(f"{tool:<22} median {median:6.2f} s  {total / MiB / median:7.1f} MiB/s")
    finally:
        moto.terminate()
        moto.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
