"""GPU health checks on recorded NVML readings, and the probe's reading logic against an NVML double.

The probe's paths run against stand-ins that follow pynvml's contract (constants, error classes,
return shapes), never against whatever NVIDIA library the machine running the tests has: the
device paths answer from the recorded 8x H100 reading, and the no-driver path from a pynvml whose
library cannot be loaded, so the tests read the same on a laptop and on a GPU server.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynvml
import pytest

from components.config.models import GpuHealthThresholds, GpuSpec, NvidiaSpec
from components.verification import gpu_probe
from components.verification.gpu_health import evaluate_gpu_probe, parse_xids
from components.verification.results import Finding

DATA = Path(__file__).resolve().parents[1] / "data" / "nvml"
HEALTHY = json.loads((DATA / "h100-sxm5-x8-healthy.json").read_text())
EXPECTED = GpuSpec(model="H100-SXM5-80GB", count=8)
PINS = NvidiaSpec(
    driver_version="570.172.08", cuda_version="12.8", container_toolkit_version="1.17.8"
)
LIMITS = GpuHealthThresholds()
KERNEL_LOG = """\
Nov 27 06:01:12 fra-gpu-01 kernel: NVRM: loading NVIDIA UNIX Open Kernel Module for x86_64  570.172.08
Nov 27 06:14:40 fra-gpu-01 kernel: NVRM: Xid (PCI:0000:2a:00): 13, pid=4411, name=python3, Graphics Exception: ESR 0x514730=0x20
Nov 27 06:15:02 fra-gpu-01 kernel: NVRM: Xid (PCI:0000:9a:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.
"""


def evaluate(reading: dict[str, Any], log: str = "") -> dict[str, Finding]:
    results = evaluate_gpu_probe("fra-gpu-01", reading, EXPECTED, PINS, LIMITS, log)
    return {r.check: r for r in results}


def test_healthy_board_passes_every_check_it_reports() -> None:
    results = evaluate(HEALTHY)
    assert [r.message() for r in results.values() if r.status == "fail"] == []
    # nvml, four fleet checks, 14 per GPU, the XID log: the plan's list for 8 GPUs
    assert len(results) == 1 + 4 + 8 * 14 + 1
    # Hopper reports no retired pages (it remaps rows instead): skipped, saying so
    skipped = {k: r.observed for k, r in results.items() if r.status == "skip"}
    assert skipped == {
        f"retired-pages-pending:gpu{i}": "NVML reports no value on this GPU" for i in range(8)
    }


def broken(mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    reading: dict[str, Any] = copy.deepcopy(HEALTHY)
    mutate(reading)
    return reading


@pytest.mark.parametrize(
    ("mutate", "check", "observed"),
    [
        (lambda r: r["gpus"].pop(), "gpu-count", "7 GPU(s)"),
        (lambda r: r["gpus"][0].update(name="NVIDIA H200"), "gpu-count", "NVIDIA H200"),
        (lambda r: r.update(driver_version="570.133.20"), "driver-version", "570.133.20"),
        (lambda r: r.update(cuda_driver_version="12.4"), "cuda-version", "12.4"),
        (
            lambda r: r["gpus"][3].update(vbios="96.00.74.00.01"),
            "vbios-uniform",
            "96.00.74.00.01, 96.00.99.00.01",
        ),
        (lambda r: r["gpus"][1].update(persistence_mode=0), "persistence-mode:gpu1", "disabled"),
        (
            lambda r: r["gpus"][2].update(ecc_mode={"current": 1, "pending": 0}),
            "ecc-mode:gpu2",
            "pending disabled",
        ),
        (
            lambda r: r["gpus"][2].update(mig_mode={"current": 0, "pending": 1}),
            "mig-mode-settled:gpu2",
            "pending 1",
        ),
        (
            lambda r: r["gpus"][4].update(ecc_uncorrected_volatile=2),
            "ecc-uncorrected-volatile:gpu4",
            "2",
        ),
        (lambda r: r["gpus"][5]["remapped_rows"].update(pending=1), "row-remap-pending:gpu5", "1"),
        (
            lambda r: r["gpus"][5]["remapped_rows"].update(failure=1),
            "row-remap-failure:gpu5",
            "yes",
        ),
        (
            lambda r: r["gpus"][0].update(retired_pages_pending=1),
            "retired-pages-pending:gpu0",
            "enabled",
        ),
        (lambda r: r["gpus"][6].update(recovery_action=2), "recovery-action:gpu6", "node reboot"),
        (lambda r: r["gpus"][7]["pcie"].update(width=8), "pcie-width:gpu7", "x8"),
        (
            lambda r: r["gpus"][0].update(clock_event_reasons=0x08 | 0x01),
            "throttle:gpu0",
            "HW slowdown",
        ),
        (
            lambda r: r["gpus"][0].update(clock_event_reasons=0x40),
            "throttle:gpu0",
            "HW thermal slowdown",
        ),
        (
            lambda r: r["gpus"][0].update(clock_event_reasons=0x20),
            "throttle:gpu0",
            "SW thermal slowdown",
        ),
        (
            lambda r: r["gpus"][0].update(clock_event_reasons=0x80),
            "throttle:gpu0",
            "HW power brake",
        ),
        (lambda r: r["gpus"][3].update(temperature_c=84), "thermal-margin:gpu3", "3 C"),
        (lambda r: r["gpus"][1]["nvlink"].update(down=[4, 11]), "nvlink:gpu1", "2 of 18 down"),
        (lambda r: r["gpus"][1].update(fabric={"state": 2, "status": 0}), "fabric:gpu1", "state 2"),
        (
            lambda r: r["gpus"][0].update(
                processes=[{"pid": 991, "name": "python3", "in_pod": False}]
            ),
            "stray-processes:gpu0",
            "python3[991]",
        ),
    ],
)
def test_each_fault_fails_its_check_with_observed_and_expected(
    mutate: Callable[[dict[str, Any]], None], check: str, observed: str
) -> None:
    results = evaluate(broken(mutate))
    assert results[check].status == "fail"
    assert observed in results[check].observed
    message = results[check].message()
    assert message.startswith(f"[driver] fra-gpu-01 {check}: observed ")
    assert ", expected " in message
    others = [r.check for r in results.values() if r.status == "fail" and r.check != check]
    assert not others, f"one fault must fail one check, also failed: {others}"


def test_processes_inside_pods_are_not_stray() -> None:
    reading = broken(
        lambda r: r["gpus"][0].update(processes=[{"pid": 7, "name": "vllm", "in_pod": True}])
    )
    assert evaluate(reading)["stray-processes:gpu0"].status == "pass"


def test_fatal_xids_since_boot_fail_and_benign_ones_do_not() -> None:
    events = parse_xids(KERNEL_LOG)
    assert [(e["xid"], e["pci"]) for e in events] == [
        (13, "PCI:0000:2a:00"),
        (79, "PCI:0000:9a:00"),
    ]
    result = evaluate(HEALTHY, KERNEL_LOG)["xid-fatal"]
    assert result.status == "fail"
    assert "Xid 79 on PCI:0000:9a:00" in result.observed
    benign = evaluate(HEALTHY, KERNEL_LOG.splitlines()[1] + "\n")["xid-fatal"]
    assert benign.status == "pass"
    assert "1 other XID" in benign.observed


def test_host_without_driver_gets_a_clear_result() -> None:
    reading = {"probe_version": 1, "nvml": "no-driver", "error": "NVML Shared Library Not Found"}
    results = evaluate_gpu_probe("fra-gpu-01", reading, EXPECTED, PINS, LIMITS)
    failed = [r for r in results if r.status == "fail"]
    assert [r.check for r in failed] == ["nvml"]
    assert "no-driver: NVML Shared Library Not Found" in failed[0].observed
    judged_anyway = {r.check for r in results if r.status == "pass"}
    assert judged_anyway == {"xid-fatal"}, "the kernel log is read without NVML"


def test_cpu_host_is_skipped_but_unexpected_gpus_fail() -> None:
    (skip,) = evaluate_gpu_probe("cpu-1", {"nvml": "no-driver"}, GpuSpec(), PINS, LIMITS)
    assert skip.status == "skip"
    (surprise,) = evaluate_gpu_probe("cpu-1", HEALTHY, GpuSpec(), PINS, LIMITS)
    assert surprise.status == "fail"


def test_thresholds_come_from_config() -> None:
    reading = broken(lambda r: r["gpus"][4].update(ecc_uncorrected_volatile=2))
    lenient = GpuHealthThresholds(max_uncorrected_volatile_ecc=5)
    results = evaluate_gpu_probe("h", reading, EXPECTED, PINS, lenient)
    assert [r.check for r in results if r.status == "fail"] == []


# A pynvml that imports but finds no NVIDIA library: what nvidia-ml-py does on a host without the
# driver (its nvmlInit raises NVMLError_LibraryNotFound), whatever the machine running the test has.
PYNVML_WITHOUT_LIBRARY = """\
NVML_ERROR_LIBRARY_NOT_FOUND = 12


class NVMLError(Exception):
    def __init__(self, value):
        self.value = value

    def __str__(self):
        return "NVML Shared Library Not Found"


def nvmlInit():
    raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
"""


def test_probe_without_an_nvml_library_says_so_in_json(tmp_path: Path) -> None:
    """The probe as hosts run it (``python3 -I -S gpu_probe.py --lib DIR``), with a pynvml whose
    library is missing on its path: one JSON document naming the cause, never a traceback."""
    (tmp_path / "pynvml.py").write_text(PYNVML_WITHOUT_LIBRARY)
    out = subprocess.run(
        [sys.executable, "-I", "-S", gpu_probe.__file__, "--lib", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    reading = json.loads(out.stdout)
    assert reading["nvml"] == "no-driver"
    assert "NVML could not start: NVML Shared Library Not Found" in reading["error"]


def test_probe_without_pynvml_says_so(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-I", "-S", gpu_probe.__file__, "--lib", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(out.stdout)["nvml"] == "no-pynvml"


class _Field:
    def __init__(self, value: int) -> None:
        self.nvmlReturn = 0
        self.value = types.SimpleNamespace(uiVal=value)


def nvml_double(reading: dict[str, Any]) -> types.SimpleNamespace:
    """pynvml's calls answering from a recorded reading; unsupported queries raise NotSupported."""
    gpus = reading["gpus"]

    def not_supported() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def by(field: str) -> Callable[[int], Any]:
        def get(handle: int, *_args: Any) -> Any:
            value = gpus[handle][field]
            if value is None:
                not_supported()
            return value

        return get

    def fabric(handle: int, info: Any) -> int:
        info.state = gpus[handle]["fabric"]["state"]
        info.status = gpus[handle]["fabric"]["status"]
        return 0

    def nvlink_state(handle: int, link: int) -> int:
        if link >= gpus[handle]["nvlink"]["links"]:
            not_supported()
        return 0 if link in gpus[handle]["nvlink"]["down"] else 1

    def failing_ecc(handle: int, *_args: Any) -> int:
        if handle == 1:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return int(gpus[handle]["ecc_uncorrected_volatile"])

    real = {
        name: getattr(pynvml, name)
        for name in dir(pynvml)
        if name.isupper() or name.startswith(("NVMLError", "c_nvml"))
    }
    return types.SimpleNamespace(
        **real,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlSystemGetDriverVersion=lambda: reading["driver_version"],
        nvmlSystemGetCudaDriverVersion_v2=lambda: 12080,
        nvmlSystemGetNVMLVersion=lambda: reading["nvml_version"],
        nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: gpus[h]["name"].encode(),
        nvmlDeviceGetUUID=by("uuid"),
        nvmlDeviceGetPciInfo=lambda h: types.SimpleNamespace(busId=gpus[h]["pci_bus_id"].encode()),
        nvmlDeviceGetVbiosVersion=by("vbios"),
        nvmlDeviceGetPersistenceMode=by("persistence_mode"),
        nvmlDeviceGetEccMode=lambda h: (
            gpus[h]["ecc_mode"]["current"],
            gpus[h]["ecc_mode"]["pending"],
        ),
        nvmlDeviceGetMigMode=lambda h: (
            gpus[h]["mig_mode"]["current"],
            gpus[h]["mig_mode"]["pending"],
        ),
        nvmlDeviceGetTotalEccErrors=failing_ecc,
        nvmlDeviceGetRemappedRows=lambda h: tuple(
            gpus[h]["remapped_rows"][k]
            for k in ("correctable", "uncorrectable", "pending", "failure")
        ),
        nvmlDeviceGetRetiredPagesPendingStatus=by("retired_pages_pending"),
        nvmlDeviceGetFieldValues=lambda h, ids: [_Field(gpus[h]["recovery_action"])],
        nvmlDeviceGetCurrPcieLinkWidth=lambda h: gpus[h]["pcie"]["width"],
        nvmlDeviceGetMaxPcieLinkWidth=lambda h: gpus[h]["pcie"]["max_width"],
        nvmlDeviceGetCurrPcieLinkGeneration=lambda h: gpus[h]["pcie"]["gen"],
        nvmlDeviceGetMaxPcieLinkGeneration=lambda h: gpus[h]["pcie"]["max_gen"],
        nvmlDeviceGetCurrentClocksEventReasons=by("clock_event_reasons"),
        nvmlDeviceGetTemperature=lambda h, _s: gpus[h]["temperature_c"],
        nvmlDeviceGetTemperatureThreshold=lambda h, _t: gpus[h]["slowdown_threshold_c"],
        nvmlDeviceGetNvLinkState=nvlink_state,
        nvmlDeviceGetGpuFabricInfo=fabric,
        nvmlDeviceGetComputeRunningProcesses=lambda h: [],
    )


def test_probe_reads_every_field_pynvml_offers() -> None:
    reading = broken(lambda r: r["gpus"][2]["nvlink"].update(down=[3]))
    got = gpu_probe.probe(nvml_double(reading))
    assert got["nvml"] == "ok"
    assert got["cuda_driver_version"] == "12.8"
    assert len(got["gpus"]) == 8
    assert got["gpus"][2]["nvlink"] == {"links": 18, "down": [3]}
    assert got["gpus"][0]["retired_pages_pending"] is None, (
        "not supported on Hopper: None, not an error"
    )
    assert got["gpus"][1]["ecc_uncorrected_volatile"] is None
    assert len(got["errors"]) == 1
    assert got["errors"][0].startswith("ecc errors:")
    for key in (
        "name",
        "uuid",
        "pci_bus_id",
        "vbios",
        "pcie",
        "fabric",
        "remapped_rows",
        "recovery_action",
    ):
        assert got["gpus"][5][key] == reading["gpus"][5][key], key
    json.dumps(got)  # what the host prints must be JSON
