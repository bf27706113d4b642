"""A model that cannot fit its GPUs stops `pulumi up` and `validate` before anything is built."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from sovereign_weights.lookup import write_cached
from sovereign_weights.manifest import Manifest, ManifestFile

from components.config import load_stack_file
from tests.conftest import sovereign
from tests.unit.test_program_mocks import ROOT, run_program
from tests.unit.test_sizing import facts


def project_with_kept_manifest(tmp_path: Path, family: str) -> Path:
    """prod-fra, with the manifest of ``family`` kept for its `mistral-small` model (1 H100)."""
    project = tmp_path / "project"
    (project / "stacks").mkdir(parents=True)
    shutil.copy(ROOT / "Pulumi.yaml", project / "Pulumi.yaml")
    shutil.copy(ROOT / "stacks" / "Pulumi.prod-fra.yaml", project / "stacks")
    config = load_stack_file(project / "stacks" / "Pulumi.prod-fra.yaml")
    model = next(m for m in config.inference.models if m.name == "mistral-small")
    described = facts(family)
    manifest = Manifest(
        model=model.name,
        revision=model.source.revision,
        files=(ManifestFile(path="config.json", size=1, sha256="0" * 64),),
        config=described.config,
        tensor_bytes=described.tensor_bytes,
    )
    write_cached(project / ".cache" / "manifests", model.name, manifest)
    return project


def test_the_program_refuses_a_model_its_gpus_cannot_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = project_with_kept_manifest(tmp_path, "mixtral-8x7b-v0.1")  # ~93 GB on one 80 GB GPU
    stack_file = project / "stacks" / "Pulumi.prod-fra.yaml"
    with pytest.raises(Exception, match=r"inference\.models\[1\]\.gpusPerReplica: .*mistral-small"):
        run_program(stack_file, monkeypatch, project, record=False)


def test_validate_refuses_it_offline_from_the_kept_manifest(tmp_path: Path) -> None:
    project = project_with_kept_manifest(tmp_path, "mixtral-8x7b-v0.1")
    result = sovereign("validate", "stacks/Pulumi.prod-fra.yaml", cwd=project)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "inference.models[1].gpusPerReplica: mistral-small needs" in result.stderr


def test_a_model_that_fits_passes_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = project_with_kept_manifest(tmp_path, "mistral-7b-v0.1")  # ~15 GB on one 80 GB GPU
    stack_file = project / "stacks" / "Pulumi.prod-fra.yaml"
    run = run_program(stack_file, monkeypatch, project, record=False)
    # the program went on past the gate: the model the gate read the manifest of is deployed
    deployments = {r.name for r in run.of_type("kubernetes:apps/v1:Deployment")}
    assert any("mistral-small" in name for name in deployments), deployments
    result = sovereign("validate", "stacks/Pulumi.prod-fra.yaml", cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    # sized from the kept manifest, not passed over for want of one
    assert re.search(r"mistral-small uses [\d.]+ GiB of the [\d.]+ GiB", result.stderr)
