"""The GPU checks that need a real GPU, in one run of a few minutes.

A GPU machine is lent for minutes at a time, so everything the project cannot measure without one
is done here in one go, each part in its own child process (a crash, hang or missing package in
one is recorded and the others still run):

- ``context``: the non-torch memory of a CUDA context, measured with torch. NVML's used memory is
  read before this process has a context; ``torch.cuda.mem_get_info`` after ``torch.cuda.init``,
  after a first kernel and after a first bf16 matrix product (cuBLAS' handle and workspace). CUDA's
  used memory minus torch's reserved memory is what vLLM calls non-torch memory; it is compared
  with ``CONTEXT_BYTES_TP1`` and ``NON_TORCH_BYTES`` in ``components/plan/sizing.py``, and CUDA's
  total with the catalog's ``usable_bytes`` for the SKU (``components/config/catalog.py``). With
  several GPUs, one process per GPU joins an NCCL group and all-reduces, and the growth of
  non-torch memory is compared with ``CONTEXT_BYTES_TP``; with one GPU that step is skipped.
- ``nvml``: the NVML health probe (``components/verification/gpu_probe.py``) run as hosts run it
  (``python3 -I -S gpu_probe.py --lib DIR``), before any CUDA context exists; its reading is also
  written as ``nvml-<sku>-x<count>.json`` beside the report, shaped like the recorded cases in
  ``tests/data/nvml`` (sorted keys, indent 1), ready to be committed as a new one.
- ``weights``: a synthetic safetensors file (a real header, random data) of ``--size-gib`` is
  written to ``--workdir``, then read back from the disk itself with O_DIRECT (one reader, four
  readers, and ``dd iflag=direct``), and loaded into GPU memory with safetensors' ``safe_open``
  (device ``cuda:0``) from a cold page cache and again warm. The report gives GiB/s for each and
  the cold load's ratio to the disk's best direct read. Without a GPU the disk reads still run.

Without CUDA (this machine, CI) each GPU piece reports ``skipped`` with a reason that starts with
"no CUDA device". The JSON report goes to ``--out``, a summary to stdout.

On the lent NVIDIA H200 (python3 there holds torch, safetensors and nvidia-ml-py, so nothing is
carried), the whole run, in one ``run`` call with ``timeout_s`` 480 and no ``carry``::

    PYTHONUNBUFFERED=1 python3 tests/bench/gpu_session.py --out $OUT/gpu-session.json --workdir /var/tmp/gpu-session --size-gib 8 --drop-caches

``--drop-caches`` writes ``/proc/sys/vm/drop_caches`` before the cold load (root only; use it on
a machine of one's own): evicting the file's pages alone (``posix_fadvise``) is always done and the
report says how many of the file's pages were still resident when the cold load began.
"""

from __future__ import annotations

import argparse
import ast
import ctypes
import ctypes.util
import importlib.util
import json
import mmap
import os
import platform
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPORT_VERSION = 1
ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "components" / "config" / "catalog.py"
SIZING = ROOT / "components" / "plan" / "sizing.py"
PROBE = ROOT / "components" / "verification" / "gpu_probe.py"
PARTS = ("nvml", "context", "weights")  # the probe first: no CUDA context of ours exists yet
PART_TIMEOUT_S = {"nvml": 60, "context": 120, "weights": 300}
GIB = 2**30
MIB = 2**20
CHUNK = 16 * MIB
NO_CUDA = "no CUDA device"

Result = dict[str, Any]


class Skip(Exception):
    """A part (or a piece of one) that cannot run here; the message is the reason."""


# --- shared ------------------------------------------------------------------------------------


def gib_s(nbytes: int, seconds: float) -> float | None:
    return round(nbytes / GIB / seconds, 3) if seconds > 0 else None


def cuda_torch() -> Any:
    """torch with a usable CUDA device, or Skip naming why not."""
    try:
        torch = importlib.import_module("torch")  # absent where there is no GPU
    except ImportError as exc:
        raise Skip(f"{NO_CUDA}: torch is not installed ({exc})") from exc
    if not torch.cuda.is_available():
        raise Skip(f"{NO_CUDA}: torch {torch.__version__} sees no CUDA device")
    return torch


def catalog_models() -> dict[str, Any]:
    """The catalog's GPU models, loaded by path: the device's Python has none of our packages."""
    spec = importlib.util.spec_from_file_location("_gpu_session_catalog", CATALOG)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"{CATALOG}: cannot be loaded as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    models: dict[str, Any] = module.GPU_MODELS
    return models


def catalog_match(gpu_name: str) -> Any:
    """The catalog SKU whose NVML name fragment is the longest one found in ``gpu_name``."""
    found = [m for m in catalog_models().values() if m.nvml_name_fragment in gpu_name]
    return max(found, key=lambda m: len(m.nvml_name_fragment)) if found else None


def sizing_constants(names: tuple[str, ...]) -> dict[str, int]:
    """Module-level constants of sizing.py, read from its source (importing it needs pydantic)."""
    tree = ast.parse(SIZING.read_text())
    # the byte units sizing.py imports from sovereign_weights.units
    scope: dict[str, Any] = {"int": int, "round": round, "GIB": GIB, "MIB": MIB}
    found: dict[str, int] = {}
    target: ast.expr
    for node in tree.body:
        if isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        else:
            continue
        if not isinstance(target, ast.Name) or value is None:
            continue
        try:
            scope[target.id] = eval(compile(ast.Expression(value), str(SIZING), "eval"), scope)
        except Exception:  # a constant that is not plain arithmetic
            continue
        if target.id in names:
            found[target.id] = int(scope[target.id])
    missing = [n for n in names if n not in found]
    if missing:
        raise RuntimeError(f"{SIZING}: constants {missing} not found; expected integer constants")
    return found


# --- part: nvml ----------------------------------------------------------------------------------


def part_nvml(args: argparse.Namespace) -> Result:
    spec = importlib.util.find_spec("pynvml")
    if spec is None or spec.origin is None:
        raise Skip(f"{NO_CUDA}: pynvml (nvidia-ml-py) is not installed for {sys.executable}")
    lib = str(Path(spec.origin).parent)
    out = subprocess.run(
        [sys.executable, "-I", "-S", str(PROBE), "--lib", lib],
        capture_output=True,
        text=True,
        check=True,
        timeout=50,
    )
    reading: dict[str, Any] = json.loads(out.stdout)
    result: Result = {"probe": str(PROBE.relative_to(ROOT)), "reading": reading}
    if reading.get("nvml") != "ok":
        raise Skip(f"{NO_CUDA}: the probe answered nvml={reading.get('nvml')!r}", result)
    gpus = reading.get("gpus") or []
    if not gpus:
        raise Skip(f"{NO_CUDA}: NVML started but lists no GPU", result)
    model = catalog_match(str(gpus[0].get("name") or ""))
    sku = model.name.lower() if model else "unknown"
    folder = Path(args.nvml_dir) if args.nvml_dir else Path(args.out).parent
    target = args.nvml_out or folder / f"nvml-{sku}-x{len(gpus)}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(reading, indent=1, sort_keys=True) + "\n")
    result.update(recorded_case=str(target), catalog_sku=model.name if model else None)
    result["errors"] = reading.get("errors", [])
    return result


# --- part: context -------------------------------------------------------------------------------


def nvml_used_bytes() -> list[int] | None:
    """NVML's used memory per GPU, read without creating a CUDA context."""
    try:
        pynvml = importlib.import_module("pynvml")
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        count = pynvml.nvmlDeviceGetCount()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        return [int(pynvml.nvmlDeviceGetMemoryInfo(h).used) for h in handles]
    finally:
        pynvml.nvmlShutdown()


def memory_point(torch: Any, device: int = 0) -> Result:
    free, total = torch.cuda.mem_get_info(device)
    used = total - free
    reserved = torch.cuda.memory_reserved(device)
    return {
        "cuda_free": free,
        "cuda_total": total,
        "cuda_used": used,
        "torch_reserved": reserved,
        "non_torch": used - reserved,
    }


def part_context(args: argparse.Namespace) -> Result:
    before = nvml_used_bytes()  # before torch touches CUDA
    torch = cuda_torch()
    constants = sizing_constants(("CONTEXT_BYTES_TP1", "CONTEXT_BYTES_TP", "NON_TORCH_BYTES"))
    t0 = time.perf_counter()
    torch.cuda.init()
    torch.cuda.set_device(0)
    points = {"after_init": memory_point(torch)}
    x = torch.ones(1024, device="cuda")
    (x + 1).sum().item()
    torch.cuda.synchronize()
    points["after_first_kernel"] = memory_point(torch)
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    (a @ a).float().sum().item()
    torch.cuda.synchronize()
    points["after_first_matmul"] = memory_point(torch)
    name = torch.cuda.get_device_name(0)
    baseline = before[0] if before else None
    last = points["after_first_matmul"]
    context = last["non_torch"] - baseline if baseline is not None else None
    cublas = last["non_torch"] - points["after_first_kernel"]["non_torch"]
    total = last["cuda_total"]
    model = catalog_match(name)
    result: Result = {
        "gpu_name": name,
        "gpu_count": torch.cuda.device_count(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "nvml_used_before_context": baseline,
        "points": points,
        "setup_s": round(time.perf_counter() - t0, 3),
        "context_non_torch_bytes": context,
        "cublas_non_torch_growth_bytes": cublas,
        "sizing": constants,
        "context_vs_CONTEXT_BYTES_TP1": round(context / constants["CONTEXT_BYTES_TP1"], 3)
        if context is not None
        else None,
        "cublas_growth_vs_NON_TORCH_BYTES": round(cublas / constants["NON_TORCH_BYTES"], 3),
        "usable_bytes_measured": total,
        "usable_gib_measured": round(total / GIB, 3),
        "catalog_sku": model.name if model else None,
        "catalog_usable_bytes": model.usable_bytes if model else None,
        "usable_vs_catalog": round(total / model.usable_bytes, 5) if model else None,
        "usable_delta_mib": round((total - model.usable_bytes) / MIB, 1) if model else None,
    }
    try:
        nccl = nccl_step(args, torch.cuda.device_count(), constants["CONTEXT_BYTES_TP"])
    except Exception as exc:  # the single-GPU figures above still stand
        nccl = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    result["nccl"] = nccl
    return result


def nccl_step(args: argparse.Namespace, count: int, context_tp: int) -> Result:
    """One process per GPU joins an NCCL group and all-reduces; each reports its memory."""
    if count < 2:
        return {"status": "skipped", "reason": f"one GPU here ({count}): NCCL needs several"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        world = ["--nccl-world", str(count), "--nccl-port", str(port)]
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--nccl-rank", str(r), *world, "--out", str(out)]
            )
            for r, out in enumerate(Path(tmp) / f"rank{r}.json" for r in range(count))
        ]
        codes = [p.wait(timeout=90) for p in procs]
        ranks = [
            json.loads(p.read_text()) for p in sorted(Path(tmp).glob("rank*.json")) if p.exists()
        ]
    if any(codes) or len(ranks) != count:
        return {"status": "failed", "reason": f"rank exit codes {codes}", "ranks": ranks}
    worst = max(r["context_non_torch_bytes"] for r in ranks)
    return {
        "status": "ok",
        "world": count,
        "ranks": ranks,
        "max_context_non_torch_bytes": worst,
        "vs_CONTEXT_BYTES_TP": round(worst / context_tp, 3),
    }


def nccl_rank(args: argparse.Namespace) -> int:
    before = nvml_used_bytes()
    torch = cuda_torch()
    dist = importlib.import_module("torch.distributed")

    rank, world = args.nccl_rank, args.nccl_world
    torch.cuda.set_device(rank)
    x = torch.ones(1 << 20, device="cuda")
    (x + 1).sum().item()
    start = memory_point(torch, rank)
    dist.init_process_group(
        "nccl",
        init_method=f"tcp://127.0.0.1:{args.nccl_port}",
        rank=rank,
        world_size=world,
        device_id=torch.device("cuda", rank),
    )
    dist.all_reduce(x)
    torch.cuda.synchronize()
    end = memory_point(torch, rank)
    dist.destroy_process_group()
    baseline = before[rank] if before else 0
    Path(args.out).write_text(
        json.dumps(
            {
                "rank": rank,
                "before_nccl": start,
                "after_all_reduce": end,
                "nccl_non_torch_growth_bytes": end["non_torch"] - start["non_torch"],
                "context_non_torch_bytes": end["non_torch"] - baseline,
            }
        )
    )
    return 0


# --- part: weights -------------------------------------------------------------------------------


def mount_of(path: Path) -> Result:
    """The mount holding ``path``: a tmpfs work directory would measure memory, not a disk."""
    best = ("", "?", "?")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, point, fstype = line.split()[:3]
            if str(path).startswith(point) and len(point) >= len(best[0]):
                best = (point, fstype, dev)
    except OSError:
        pass
    return {"mount_point": best[0], "fstype": best[1], "device": best[2]}


def random_source(size: int) -> Callable[[], bytes]:
    """Incompressible chunks: numpy's generator where present (fast), else os.urandom."""
    try:
        np = importlib.import_module("numpy")

        rng = np.random.default_rng()
        return lambda: rng.bytes(size)
    except ImportError:
        return lambda: os.urandom(size)


def write_safetensors(path: Path, total: int) -> Result:
    """A safetensors file of about ``total`` bytes: BF16 [rows, 4096] tensors, random data."""
    tensor_bytes = max(8192, min(256 * MIB, total // 8) // 8192 * 8192)
    count = max(1, total // tensor_bytes)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    for i in range(count):
        begin = i * tensor_bytes
        header[f"model.layers.{i}.mlp.down_proj.weight"] = {
            "dtype": "BF16",
            "shape": [tensor_bytes // 8192, 4096],
            "data_offsets": [begin, begin + tensor_bytes],
        }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes
    data = count * tensor_bytes
    chunk = random_source(min(CHUNK, data))
    t0 = time.perf_counter()
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        left = data
        while left:
            block = chunk()
            f.write(block[:left])
            left -= min(left, len(block))
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - t0
    return {
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "tensors": count,
        "tensor_bytes": tensor_bytes,
        "data_bytes": data,
        "write_fsync_gib_s": gib_s(path.stat().st_size, seconds),
    }


def evict(path: Path, drop_caches: bool) -> Result:
    with path.open("rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    dropped: str | None = None
    if drop_caches:
        try:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            dropped = "ok"
        except OSError as exc:
            dropped = f"failed: {exc}"
    return {"drop_caches": dropped, "resident_fraction": resident_fraction(path)}


def resident_fraction(path: Path) -> float | None:
    """Share of the file's pages in the page cache (mincore), or None where it cannot be read."""
    size = path.stat().st_size
    name = ctypes.util.find_library("c")
    if not size or not name:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    page = mmap.PAGESIZE
    pages = (size + page - 1) // page
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    vec = (ctypes.c_ubyte * pages)()
    with path.open("rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mm:
        view = ctypes.c_char.from_buffer(mm)  # a private mapping: writable, pages untouched
        rc = libc.mincore(ctypes.addressof(view), size, vec)
        del view  # the mapping cannot close while exported
    if rc != 0:
        return None
    resident = sum(b & 1 for b in vec)
    return round(resident / pages, 4)


def direct_read(path: Path, readers: int) -> Result:
    """Sequential O_DIRECT reads of the whole file by ``readers`` threads over equal spans."""
    size = path.stat().st_size
    span = -(-size // readers // CHUNK) * CHUNK
    done = [0] * readers
    errors: list[str] = []

    def read(index: int) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        except OSError as exc:
            errors.append(f"open O_DIRECT: {exc}")
            return
        buf = mmap.mmap(-1, CHUNK)  # page-aligned, as O_DIRECT needs
        try:
            offset, end = index * span, min(size, (index + 1) * span)
            while offset < end:
                n = os.preadv(fd, [buf], offset)
                if n <= 0:
                    break
                done[index] += min(n, end - offset)
                offset += n
        except OSError as exc:
            errors.append(f"read O_DIRECT: {exc}")
        finally:
            buf.close()
            os.close(fd)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(readers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        return {"status": "failed", "reason": "; ".join(sorted(set(errors)))}
    return {
        "status": "ok",
        "bytes": sum(done),
        "seconds": round(seconds, 3),
        "gib_s": gib_s(sum(done), seconds),
    }


def dd_read(path: Path) -> Result:
    dd = shutil.which("dd")
    if dd is None:
        return {"status": "skipped", "reason": "dd is not installed"}
    cmd = [dd, f"if={path}", "of=/dev/null", "bs=16M", "iflag=direct"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    seconds = time.perf_counter() - t0
    if out.returncode:
        return {"status": "failed", "reason": out.stderr.strip()[-300:]}
    size = path.stat().st_size
    return {
        "status": "ok",
        "bytes": size,
        "seconds": round(seconds, 3),
        "gib_s": gib_s(size, seconds),
        "dd": out.stderr.strip().splitlines()[-1:],
    }


def load_to_gpu(torch: Any, path: Path) -> Result:
    safe_open = importlib.import_module("safetensors").safe_open

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    nbytes = 0
    held = []
    with safe_open(str(path), framework="pt", device="cuda:0") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            tensor = f.get_tensor(key)
            nbytes += tensor.numel() * tensor.element_size()
            held.append(tensor)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    on_gpu = all(t.is_cuda for t in held)
    del held
    torch.cuda.empty_cache()
    return {
        "status": "ok",
        "bytes": nbytes,
        "seconds": round(seconds, 3),
        "gib_s": gib_s(nbytes, seconds),
        "on_gpu": on_gpu,
    }


def part_weights(args: argparse.Namespace) -> Result:
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    size = int(args.size_gib * GIB)
    free = shutil.disk_usage(workdir).free
    if free < size + GIB:
        raise Skip(
            f"{workdir}: {free / GIB:.1f} GiB free, {args.size_gib} GiB and 1 GiB spare needed"
        )
    path = workdir / "gpu-session-synthetic.safetensors"
    result: Result = {"workdir": str(workdir), **mount_of(workdir)}
    try:
        result["file"] = write_safetensors(path, size)
        result["disk"] = {
            "direct_1_reader": direct_read(path, 1),
            "direct_4_readers": direct_read(path, 4),
            "dd_direct": dd_read(path),
        }
        rates = [r["gib_s"] for r in result["disk"].values() if r.get("status") == "ok"]
        result["disk_best_gib_s"] = max(rates) if rates else None
        try:
            torch = cuda_torch()
            importlib.import_module("safetensors")
        except (Skip, ImportError) as exc:
            reason = str(exc) if isinstance(exc, Skip) else f"safetensors is not installed ({exc})"
            result["loader"] = {"status": "skipped", "reason": reason}
            result["ratio_cold_loader_to_disk"] = None
            return result
        result["cache_before_cold"] = evict(path, args.drop_caches)
        cold = load_to_gpu(torch, path)
        cold["resident_fraction_after"] = resident_fraction(path)
        warm = load_to_gpu(torch, path)
        result["loader"] = {
            "status": "ok",
            "name": "safetensors.safe_open(device='cuda:0')",
            "cold": cold,
            "warm": warm,
        }
        best = result["disk_best_gib_s"]
        result["ratio_cold_loader_to_disk"] = round(cold["gib_s"] / best, 3) if best else None
        return result
    finally:
        path.unlink(missing_ok=True)


# --- orchestration -------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[argparse.Namespace], Result]] = {
    "nvml": part_nvml,
    "context": part_context,
    "weights": part_weights,
}


def run_child(args: argparse.Namespace) -> int:
    """One part in this process; its outcome is written to ``--out`` as JSON."""
    outcome: Result
    try:
        outcome = {"status": "ok", "reason": None, "result": RUNNERS[args.child](args)}
    except Skip as exc:
        detail = exc.args[1] if len(exc.args) > 1 else None
        outcome = {"status": "skipped", "reason": str(exc.args[0]), "result": detail}
    except Exception as exc:  # recorded; the other parts still run
        outcome = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}", "result": None}
    Path(args.out).write_text(json.dumps(outcome, default=str))
    return 0


def run_part(name: str, args: argparse.Namespace) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "part.json"
        cmd = [sys.executable, __file__, "--child", name, "--out", str(out)]
        cmd += ["--workdir", str(args.workdir), "--size-gib", str(args.size_gib)]
        cmd += ["--nvml-out", str(args.nvml_out)] if args.nvml_out else []
        cmd += ["--nvml-dir", str(Path(args.out).resolve().parent)]
        cmd += ["--drop-caches"] if args.drop_caches else []
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=PART_TIMEOUT_S[name], check=False
            )
        except subprocess.TimeoutExpired:
            outcome: Result = {
                "status": "failed",
                "reason": f"timed out after {PART_TIMEOUT_S[name]} s",
                "result": None,
            }
        else:
            if out.exists():
                outcome = json.loads(out.read_text())
            else:
                tail = (proc.stderr or proc.stdout).strip()[-800:]
                outcome = {
                    "status": "failed",
                    "reason": f"exit {proc.returncode} without a result: {tail}",
                    "result": None,
                }
    outcome["wall_s"] = round(time.perf_counter() - t0, 3)
    return outcome


def summary(report: Result) -> list[str]:
    lines = [f"gpu session: {report['wall_s']} s on {report['host']['hostname']}"]
    for name, part in report["parts"].items():
        head = f"- {name}: {part['status']}" + (f" ({part['reason']})" if part["reason"] else "")
        lines.append(head)
        res = part.get("result") or {}
        if part["status"] != "ok":
            continue
        if name == "nvml":
            lines.append(f"  reading written to {res['recorded_case']}; errors {res['errors']}")
        if name == "context":
            lines.append(
                f"  {res['gpu_name']}: CUDA total {res['usable_gib_measured']} GiB, catalog"
                f" {res['catalog_sku']} x{res['usable_vs_catalog']} ({res['usable_delta_mib']} MiB)"
            )
            lines.append(
                f"  context non-torch {res['context_non_torch_bytes']} B"
                f" (x{res['context_vs_CONTEXT_BYTES_TP1']} of CONTEXT_BYTES_TP1); cuBLAS growth"
                f" {res['cublas_non_torch_growth_bytes']} B; NCCL {res['nccl']['status']}"
            )
        if name == "weights":
            disk = res.get("disk", {})
            rates = ", ".join(f"{k} {v.get('gib_s', v.get('status'))}" for k, v in disk.items())
            lines.append(f"  {res.get('fstype')} disk GiB/s: {rates}")
            loader = res.get("loader", {})
            if loader.get("status") == "ok":
                lines.append(
                    f"  safe_open to cuda: cold {loader['cold']['gib_s']} GiB/s, warm"
                    f" {loader['warm']['gib_s']} GiB/s; cold/disk {res['ratio_cold_loader_to_disk']}"
                )
            else:
                lines.append(f"  loader: {loader.get('status')} ({loader.get('reason')})")
    return lines


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="where the JSON report is written")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    p.add_argument("--size-gib", type=float, default=8.0, help="synthetic safetensors file size")
    p.add_argument("--workdir", default="/var/tmp/gpu-session", help="where that file is written")
    p.add_argument("--nvml-out", type=Path, help="the NVML reading's path (default: beside --out)")
    p.add_argument("--drop-caches", action="store_true", help="also drop the whole page cache")
    p.add_argument("--child", choices=PARTS, help=argparse.SUPPRESS)
    p.add_argument("--nvml-dir", help=argparse.SUPPRESS)
    p.add_argument("--nccl-rank", type=int, help=argparse.SUPPRESS)
    p.add_argument("--nccl-world", type=int, help=argparse.SUPPRESS)
    p.add_argument("--nccl-port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = [x for x in parts if x not in PARTS]
    if unknown or not parts:
        p.error(
            f"--parts: {unknown or 'nothing'} given; expected a comma-separated subset of {PARTS}"
        )
    args.parts = [x for x in PARTS if x in parts]
    if args.size_gib <= 0:
        p.error(f"--size-gib: {args.size_gib} given; expected a positive number of GiB")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.nccl_rank is not None:
        return nccl_rank(args)
    if args.child:
        return run_child(args)
    t0 = time.perf_counter()
    report: Result = {
        "report_version": REPORT_VERSION,
        "script": str(Path(__file__).resolve().relative_to(ROOT)),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {
            "hostname": socket.gethostname(),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "args": {
            "parts": args.parts,
            "size_gib": args.size_gib,
            "workdir": args.workdir,
            "drop_caches": args.drop_caches,
        },
        "parts": {},
    }
    for name in args.parts:
        report["parts"][name] = run_part(name, args)
    report["wall_s"] = round(time.perf_counter() - t0, 3)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, sort_keys=True, default=str) + "\n")
    print("\n".join(summary(report)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
