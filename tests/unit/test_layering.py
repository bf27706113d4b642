"""The seams hold: pure layers import neither Pulumi nor paramiko; only the executor uses paramiko."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_config_and_plan_are_pure() -> None:
    for module in ("components.config", "components.plan", "components.cli"):
        loaded = imported_after(module)
        assert "pulumi" not in loaded, f"{module} pulls in the Pulumi SDK"
        assert "paramiko" not in loaded, f"{module} pulls in paramiko"


def test_only_the_executor_imports_paramiko() -> None:
    users = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "components").rglob("*.py")
        if "import paramiko" in path.read_text() or "from paramiko" in path.read_text()
    ]
    assert users == ["components/execution/ssh.py"]
