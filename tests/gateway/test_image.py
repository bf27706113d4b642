"""The gateway image: hadolint clean, base pinned by digest, non-root, ports from one home."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from sovereign_gateway.ports import ADMIN_HTTP_PORT, PUBLIC_PORT, SCALER_GRPC_PORT

IMAGE_DIR = Path(__file__).resolve().parents[2] / "images" / "gateway"
DOCKERFILE = IMAGE_DIR / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def test_dockerfile_is_hadolint_clean() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_base_is_pinned_by_digest_and_the_image_runs_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert bases
    for base in bases:
        assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", base), base
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users
    assert not users[-1].startswith(("root", "0"))


def test_exposed_ports_are_the_gateway_defaults() -> None:
    exposed = re.findall(r"^EXPOSE\s+(.+)$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert [int(port) for line in exposed for port in line.split()] == [
        PUBLIC_PORT,
        SCALER_GRPC_PORT,
        ADMIN_HTTP_PORT,
    ]


def test_locked_requirements_cover_the_declared_dependencies() -> None:
    locked = {
        line.split("==")[0].lower().replace("_", "-")
        for line in (IMAGE_DIR / "requirements.lock").read_text().splitlines()
        if line and not line.startswith("#")
    }
    declared = re.findall(
        r'^\s+"([A-Za-z0-9_.-]+)[<>=]', (IMAGE_DIR / "pyproject.toml").read_text(), re.MULTILINE
    )
    assert declared
    assert {name.lower() for name in declared} <= locked
