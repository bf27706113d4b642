"""Fixtures for the weights tests: a real moto S3 server on loopback, a counting proxy in front
of it, model directories with real safetensors files, and a runner for ``sovereign-weights``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
from sovereign_weights.layout import CACHE_FILESYSTEM_MARKER

from tests.loopback import free_port, wait_for_listener, wait_until
from tests.weights.s3_proxy import S3Proxy

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MiB = 1024 * 1024
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",  # moto accepts any pair
    "AWS_DEFAULT_REGION": "eu-central-1",
}
MOTO_START_SECONDS = 30
COMMAND_SECONDS = 60


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A moto S3 server process on a free loopback port for the whole session."""
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which(
        "moto_server"
    )
    assert moto, "moto_server is not installed (pip install 'moto[server]')"
    port = free_port()
    process = subprocess.Popen(
        [moto, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not wait_for_listener(process, port, timeout=MOTO_START_SECONDS, interval=0.1):
            raise RuntimeError("moto_server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def proxy(moto_url: str) -> Iterator[S3Proxy]:
    with S3Proxy(moto_url) as running:
        yield running


def s3_client(url: str) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
    )


@pytest.fixture
def bucket(moto_url: str, request: pytest.FixtureRequest) -> str:
    """A fresh bucket per test (moto keeps state for the session)."""
    name = "weights-" + str(request.node.name).lower().replace("_", "-")[:40].strip("-")
    s3_client(moto_url).create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"}
    )
    return name


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], int]]) -> None:
    """A real safetensors file: header, then random data (name -> (dtype, shape, nbytes))."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape, nbytes) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        left = offset
        while left:
            chunk = min(left, 4 * MiB)
            handle.write(os.urandom(chunk))
            left -= chunk


def make_model(directory: Path, shard_mib: tuple[int, ...] = (12, 5)) -> Path:
    """A small model directory shaped like a Hugging Face checkpoint."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "hidden_size": 256,
                "intermediate_size": 512,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "num_hidden_layers": 2,
                "max_position_embeddings": 4096,
                "vocab_size": 1000,
                "torch_dtype": "bfloat16",
            }
        )
    )
    (directory / "tokenizer.json").write_text('{"version": "1.0"}')
    (directory / "generation_config.json").write_text("")  # an empty file is a file too
    for i, mib in enumerate(shard_mib, start=1):
        name = f"model-{i:05d}-of-{len(shard_mib):05d}.safetensors"
        write_safetensors(
            directory / name, {f"layer{i}.weight": ("BF16", [mib * MiB // 2], mib * MiB)}
        )
    return directory


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        lines = (self.stdout if self.returncode == 0 else self.stderr).strip().splitlines()
        return lines[-1] if lines else ""


def weights_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(CREDENTIALS)
    return env


def weights_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sovereign_weights", *args]


def run_weights(*args: str, timeout: float = COMMAND_SECONDS) -> Result:
    done = subprocess.run(
        weights_command(*args),
        capture_output=True,
        text=True,
        env=weights_env(),
        timeout=timeout,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def start_weights(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        weights_command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=weights_env(),
    )


def expect_within(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Fail the test unless ``predicate`` comes true within ``timeout`` seconds."""
    assert wait_until(predicate, timeout), f"timed out after {timeout}s waiting for {what}"


def mark_cache_filesystem(root: Path) -> Path:
    """What host-setup/40-nvme-cache writes at the root of the cache filesystem it mounted."""
    (root / CACHE_FILESYSTEM_MARKER).write_text("label=sovereign-cache uuid=test\n")
    return root


@contextlib.contextmanager
def marked_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A real filesystem (a tmpfs of ``size``) mounted at ``mount_point`` and marked as the host's
    cache step marks the cache filesystem it mounted; unmounted afterwards."""
    mount_point.mkdir(exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mark_cache_filesystem(mount_point)
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
