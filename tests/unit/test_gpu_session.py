"""The GPU session script runs here, without a GPU, and says what it skipped and why.

It runs once on a lent GPU machine, so its GPU paths must not meet their first bug there: besides
the real no-GPU run, one run puts stand-ins for torch and safetensors first on the path. The
safetensors stand-in parses the synthetic file's header by the format's rules (little-endian u64
length, JSON, contiguous offsets that end at the file's end), so the file the script writes is
checked too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sovereign_weights.units import GIB

from components.config.catalog import GPU_MODELS
from components.plan.sizing import CONTEXT_BYTES_TP1, NON_TORCH_BYTES

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "bench" / "gpu_session.py"
SIZE_GIB = "0.03125"  # 32 MiB: the disk reads stay well under a second

FAKE_TORCH = '''
"""Stand-in for torch on one H200: memory figures move as a CUDA context would move them."""
__version__ = "0.0-stand-in"

class version:
    cuda = "13.0"

bfloat16 = "bfloat16"
_state = {"used": 0, "reserved": 0}
TOTAL = 150_021_390_336

class Tensor:
    def __init__(self, numel=1, size=2):
        self._numel, self._size, self.is_cuda = numel, size, True
    def __add__(self, other):
        return self
    def __matmul__(self, other):
        _state["used"] += 64 << 20  # cuBLAS' handle and workspace, outside torch's pool
        return self
    def sum(self):
        return self
    def float(self):
        return self
    def item(self):
        return 0.0
    def numel(self):
        return self._numel
    def element_size(self):
        return self._size

class cuda:
    @staticmethod
    def is_available():
        return True
    @staticmethod
    def init():
        _state["used"] += 520 << 20
    @staticmethod
    def set_device(index):
        pass
    @staticmethod
    def mem_get_info(device=0):
        return TOTAL - _state["used"] - _state["reserved"], TOTAL
    @staticmethod
    def memory_reserved(device=0):
        return _state["reserved"]
    @staticmethod
    def synchronize():
        pass
    @staticmethod
    def get_device_name(index=0):
        return "NVIDIA H200"
    @staticmethod
    def device_count():
        return 1
    @staticmethod
    def empty_cache():
        pass

def ones(n, device=None):
    _state["reserved"] = max(_state["reserved"], 2 << 20)
    return Tensor(n, 4)

def randn(*shape, device=None, dtype=None):
    _state["reserved"] += 32 << 20
    return Tensor(shape[0] * shape[1], 2)
'''

FAKE_SAFETENSORS = '''
"""Stand-in for safetensors.safe_open that checks the file's header as the format defines it."""
import json, os, struct, torch

class safe_open:
    def __init__(self, path, framework, device):
        assert framework == "pt" and device == "cuda:0", (framework, device)
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        header.pop("__metadata__")
        end = 0
        for name, info in header.items():
            begin, stop = info["data_offsets"]
            assert begin == end, f"{name}: gap or overlap at {begin}"
            assert info["dtype"] == "BF16"
            assert info["shape"][0] * info["shape"][1] * 2 == stop - begin, name
            end = stop
        assert 8 + length + end == os.path.getsize(path), "data does not end at the file's end"
        self.header = header
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return False
    def keys(self):
        return list(self.header)
    def get_tensor(self, name):
        begin, stop = self.header[name]["data_offsets"]
        return torch.Tensor((stop - begin) // 2, 2)
'''


def run_session(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    out = tmp_path / "out" / "report.json"
    work = ["--workdir", str(tmp_path / "work")]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--size-gib", SIZE_GIB, *work, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=env,
    )
    assert "gpu session:" in proc.stdout
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def with_stand_ins(tmp_path: Path) -> dict[str, str]:
    fakes = tmp_path / "fakes"
    (fakes / "torch").mkdir(parents=True)
    (fakes / "torch" / "__init__.py").write_text(FAKE_TORCH)
    (fakes / "safetensors").mkdir()
    (fakes / "safetensors" / "__init__.py").write_text(FAKE_SAFETENSORS)
    path = os.pathsep.join([str(fakes), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def test_without_a_gpu_each_gpu_piece_is_skipped_with_its_reason(tmp_path: Path) -> None:
    report = run_session(tmp_path)
    assert report["report_version"] == 1
    assert set(report["parts"]) == {"nvml", "context", "weights"}
    for part in report["parts"].values():
        assert set(part) == {"status", "reason", "result", "wall_s"}
    nvml, context = report["parts"]["nvml"], report["parts"]["context"]
    assert nvml["status"] == "skipped"
    assert nvml["reason"].startswith("no CUDA device")
    assert nvml["result"]["reading"]["nvml"] == "no-driver"
    assert context["status"] == "skipped"
    assert context["reason"].startswith("no CUDA device")
    assert not list((tmp_path / "out").glob("nvml-*.json")), "no reading to record without a GPU"


def test_without_a_gpu_the_disk_is_still_measured(tmp_path: Path) -> None:
    weights = run_session(tmp_path, "--parts", "weights")["parts"]["weights"]
    assert weights["status"] == "ok", weights["reason"]
    result = weights["result"]
    assert result["file"]["file_bytes"] > float(SIZE_GIB) * GIB * 0.99
    assert result["disk"]["dd_direct"]["status"] in {"ok", "failed", "skipped"}
    if result["disk"]["direct_1_reader"]["status"] == "ok":  # O_DIRECT refused on some file systems
        assert result["disk"]["direct_1_reader"]["bytes"] == result["file"]["file_bytes"]
        assert result["disk_best_gib_s"] > 0
    assert result["loader"]["status"] == "skipped"
    assert result["loader"]["reason"].startswith("no CUDA device")
    assert result["ratio_cold_loader_to_disk"] is None
    assert not (tmp_path / "work" / "gpu-session-synthetic.safetensors").exists(), "cleaned up"


def test_parts_flag_runs_only_the_parts_named(tmp_path: Path) -> None:
    report = run_session(tmp_path, "--parts", "context")
    assert list(report["parts"]) == ["context"]
    assert report["args"]["parts"] == ["context"]


def test_unknown_part_is_refused_by_name(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "r.json"), "--parts", "nccl"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "--parts: ['nccl'] given" in proc.stderr


def test_gpu_paths_compare_against_the_catalog_and_sizing_constants(tmp_path: Path) -> None:
    report = run_session(tmp_path, "--parts", "context,weights", env=with_stand_ins(tmp_path))
    context = report["parts"]["context"]
    assert context["status"] == "ok", context["reason"]
    result = context["result"]
    assert result["catalog_sku"] == "H200-SXM5-141GB"
    assert result["catalog_usable_bytes"] == GPU_MODELS["H200-SXM5-141GB"].usable_bytes
    assert result["sizing"]["CONTEXT_BYTES_TP1"] == CONTEXT_BYTES_TP1
    assert result["sizing"]["NON_TORCH_BYTES"] == NON_TORCH_BYTES
    assert result["points"]["after_first_matmul"]["non_torch"] == (520 + 64) << 20
    assert result["cublas_non_torch_growth_bytes"] == 64 << 20
    assert result["usable_vs_catalog"] == pytest.approx(
        150_021_390_336 / GPU_MODELS["H200-SXM5-141GB"].usable_bytes, abs=1e-5
    )
    assert result["nccl"]["status"] == "skipped"
    assert "NCCL needs several" in result["nccl"]["reason"]

    weights = report["parts"]["weights"]
    assert weights["status"] == "ok", weights["reason"]
    loader = weights["result"]["loader"]
    assert loader["status"] == "ok", loader
    assert loader["cold"]["bytes"] == weights["result"]["file"]["data_bytes"]
    assert loader["cold"]["on_gpu"] is True
    assert 0 <= weights["result"]["cache_before_cold"]["resident_fraction"] <= 1
