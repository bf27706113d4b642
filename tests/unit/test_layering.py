"""The seams hold: pure layers (config, plan, the images' packages) import neither Pulumi, paramiko
nor the S3 client where they must not; only the executor uses paramiko."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_after(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(out.stdout.split())


# (modules imported together, top-level packages that must stay out of the process)
SEAMS = [
    ("components.config", {"pulumi", "paramiko"}),
    ("components.plan", {"pulumi", "paramiko"}),
    ("components.cli", {"pulumi", "paramiko"}),
    ("components.plan.kubernetes, components.plan.render", {"pulumi", "paramiko", "boto3"}),
    # the plan sizes models from kept manifests, without the S3 client
    ("components.plan.sizing", {"boto3", "botocore"}),
    # the warmer image ships its own package only
    (
        "sovereign_weights.__main__, sovereign_weights.warm, sovereign_weights.publish",
        {"pulumi", "components", "paramiko"},
    ),
]


@pytest.mark.parametrize(("modules", "forbidden"), SEAMS, ids=[m for m, _ in SEAMS])
def test_a_pure_layer_imports_none_of_the_forbidden_packages(
    modules: str, forbidden: set[str]
) -> None:
    loaded = imported_after(modules)
    pulled_in = sorted({m.split(".")[0] for m in loaded} & forbidden)
    assert not pulled_in, f"{modules} pulls in {', '.join(pulled_in)}"


def test_only_the_executor_imports_paramiko() -> None:
    users = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "components").rglob("*.py")
        if "import paramiko" in path.read_text() or "from paramiko" in path.read_text()
    ]
    assert users == ["components/execution/ssh.py"]
