"""GPU health probe: reads NVML through nvidia-ml-py on the host and prints one JSON document.

This file is copied to hosts and run there as ``python3 -I -S gpu_probe.py --lib DIR``; it uses only
the standard library and ``pynvml`` (from the probe environment step) and decides nothing: the
thresholds are applied by ``components.verification.gpu_health`` on the machine that verifies,
so a recorded reading can be re-evaluated later. A host without the NVIDIA library gets a JSON
result saying so, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROBE_VERSION = 1

# Clock event reasons that mean the hardware is protecting itself (nvml.h, nvmlClocksEventReason*).
HW_SLOWDOWN = 0x08
SW_THERMAL = 0x20
HW_THERMAL = 0x40
HW_POWER_BRAKE = 0x80


class _Reader:
    """Calls NVML, turning "not supported" into None and other failures into recorded errors."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.errors: list[str] = []

    def get(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self.nvml.NVMLError as exc:
            if getattr(exc, "value", None) in (
                self.nvml.NVML_ERROR_NOT_SUPPORTED,
                getattr(self.nvml, "NVML_ERROR_FUNCTION_NOT_FOUND", -1),
            ):
                return None
            self.errors.append(f"{what}: {exc}")
            return None
        except (AttributeError, TypeError) as exc:  # an older pynvml without this call
            self.errors.append(f"{what}: {exc}")
            return None


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _process_name(pid: int) -> tuple[str, bool]:
    """The command name and whether the process runs in a Kubernetes pod's cgroup."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return "?", False
    return name, "kubepods" in cgroup


def read_device(nvml: Any, reader: _Reader, index: int) -> dict[str, Any]:
    get = reader.get
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    device: dict[str, Any] = {"index": index}
    device["name"] = _text(get("name", nvml.nvmlDeviceGetName, handle))
    device["uuid"] = _text(get("uuid", nvml.nvmlDeviceGetUUID, handle))
    pci = get("pci", nvml.nvmlDeviceGetPciInfo, handle)
    device["pci_bus_id"] = _text(pci.busId) if pci is not None else None
    device["vbios"] = _text(get("vbios", nvml.nvmlDeviceGetVbiosVersion, handle))
    device["persistence_mode"] = get("persistence", nvml.nvmlDeviceGetPersistenceMode, handle)
    ecc = get("ecc mode", nvml.nvmlDeviceGetEccMode, handle)
    device["ecc_mode"] = {"current": ecc[0], "pending": ecc[1]} if ecc else None
    mig = get("mig mode", nvml.nvmlDeviceGetMigMode, handle)
    device["mig_mode"] = {"current": mig[0], "pending": mig[1]} if mig else None
    device["ecc_uncorrected_volatile"] = get(
        "ecc errors",
        nvml.nvmlDeviceGetTotalEccErrors,
        handle,
        nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
        nvml.NVML_VOLATILE_ECC,
    )
    rows = get("remapped rows", nvml.nvmlDeviceGetRemappedRows, handle)
    device["remapped_rows"] = (
        {"correctable": rows[0], "uncorrectable": rows[1], "pending": rows[2], "failure": rows[3]}
        if rows
        else None
    )
    device["retired_pages_pending"] = get(
        "retired pages", nvml.nvmlDeviceGetRetiredPagesPendingStatus, handle
    )
    fields = get(
        "recovery action",
        nvml.nvmlDeviceGetFieldValues,
        handle,
        [nvml.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION],
    )
    device["recovery_action"] = (
        int(fields[0].value.uiVal) if fields is not None and fields[0].nvmlReturn == 0 else None
    )
    device["pcie"] = {
        "width": get("pcie width", nvml.nvmlDeviceGetCurrPcieLinkWidth, handle),
        "max_width": get("pcie max width", nvml.nvmlDeviceGetMaxPcieLinkWidth, handle),
        "gen": get("pcie gen", nvml.nvmlDeviceGetCurrPcieLinkGeneration, handle),
        "max_gen": get("pcie max gen", nvml.nvmlDeviceGetMaxPcieLinkGeneration, handle),
    }
    reasons_fn = (
        getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
        or nvml.nvmlDeviceGetCurrentClocksThrottleReasons
    )
    device["clock_event_reasons"] = get("clock event reasons", reasons_fn, handle)
    device["temperature_c"] = get(
        "temperature", nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU
    )
    device["slowdown_threshold_c"] = get(
        "slowdown threshold",
        nvml.nvmlDeviceGetTemperatureThreshold,
        handle,
        nvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN,
    )
    device["nvlink"] = _nvlink(nvml, reader, handle)
    device["fabric"] = _fabric(nvml, reader, handle)
    processes = get("processes", nvml.nvmlDeviceGetComputeRunningProcesses, handle) or []
    device["processes"] = []
    for proc in processes:
        name, in_pod = _process_name(int(proc.pid))
        device["processes"].append({"pid": int(proc.pid), "name": name, "in_pod": in_pod})
    return device


def _nvlink(nvml: Any, reader: _Reader, handle: Any) -> dict[str, Any]:
    supported: list[int] = []
    down: list[int] = []
    for link in range(nvml.NVML_NVLINK_MAX_LINKS):
        try:
            state = nvml.nvmlDeviceGetNvLinkState(handle, link)
        except nvml.NVMLError:
            continue  # link absent on this SKU
        supported.append(link)
        if state != nvml.NVML_FEATURE_ENABLED:
            down.append(link)
    return {"links": len(supported), "down": down}


def _fabric(nvml: Any, reader: _Reader, handle: Any) -> dict[str, Any] | None:
    info_type = getattr(nvml, "c_nvmlGpuFabricInfo_t", None)
    if info_type is None:
        return None
    info = info_type()
    if reader.get("fabric", nvml.nvmlDeviceGetGpuFabricInfo, handle, info) is None:
        return None
    if int(info.state) == nvml.NVML_GPU_FABRIC_STATE_NOT_SUPPORTED:
        return None
    return {"state": int(info.state), "status": int(info.status)}


def probe(nvml: Any) -> dict[str, Any]:
    """Everything the health checks need, as plain JSON-able data."""
    result: dict[str, Any] = {"probe_version": PROBE_VERSION}
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        result["nvml"] = "no-driver"
        result["error"] = (
            f"NVML could not start: {exc} (is the NVIDIA driver installed and loaded?)"
        )
        return result
    reader = _Reader(nvml)
    try:
        result["nvml"] = "ok"
        result["driver_version"] = _text(reader.get("driver", nvml.nvmlSystemGetDriverVersion))
        cuda = reader.get("cuda", nvml.nvmlSystemGetCudaDriverVersion_v2)
        result["cuda_driver_version"] = f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None
        result["nvml_version"] = _text(reader.get("nvml", nvml.nvmlSystemGetNVMLVersion))
        count = nvml.nvmlDeviceGetCount()
        result["gpus"] = [read_device(nvml, reader, i) for i in range(count)]
    finally:
        nvml.nvmlShutdown()
    result["errors"] = reader.errors
    return result


def main(argv: list[str]) -> int:
    lib = argv[argv.index("--lib") + 1] if "--lib" in argv else None
    if lib:
        sys.path.insert(0, lib)
    try:
        import pynvml  # noqa: PLC0415 - found only after --lib is on the path
    except ImportError as exc:
        print(json.dumps({"probe_version": PROBE_VERSION, "nvml": "no-pynvml", "error": str(exc)}))
        return 0
    print(json.dumps(probe(pynvml), sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
