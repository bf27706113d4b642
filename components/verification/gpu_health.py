"""Judging a GPU probe reading (pure): the ``driver`` layer's checks for one host.

Input is the JSON the probe printed (``gpu_probe.py``) and the kernel log's XID lines; output is one
:class:`Finding` per check, each naming what was observed and what was expected.
"""

from __future__ import annotations

import re
from typing import Any

from components.config.catalog import GPU_MODELS
from components.config.models import GpuHealthThresholds, GpuSpec, NvidiaSpec
from components.plan.checks import GPU_DEVICE_CHECKS, gpu_check
from components.verification.gpu_probe import HW_POWER_BRAKE, HW_SLOWDOWN, HW_THERMAL, SW_THERMAL
from components.verification.results import Finding, skipped, verdict

LAYER = "driver"
FABRIC_COMPLETED = 3
NVML_SUCCESS = 0
RECOVERY_ACTIONS = {
    0: "none",
    1: "GPU reset",
    2: "node reboot",
    3: "drain P2P",
    4: "drain and reset",
    5: "recover IMEX domain",
    6: "bus reset",
    7: "system reboot",
}
THROTTLE_NAMES = {
    HW_SLOWDOWN: "HW slowdown",
    SW_THERMAL: "SW thermal slowdown",
    HW_THERMAL: "HW thermal slowdown",
    HW_POWER_BRAKE: "HW power brake",
}

# "NVRM: Xid (PCI:0000:1b:00): 79, pid=..., GPU has fallen off the bus."
_XID = re.compile(r"NVRM: Xid \((?P<pci>[^)]*)\): (?P<xid>\d+),?(?P<rest>.*)")


def parse_xids(kernel_log: str) -> list[dict[str, Any]]:
    """XID events from ``journalctl -k -b`` / ``dmesg`` text."""
    events = []
    for line in kernel_log.splitlines():
        match = _XID.search(line)
        if match:
            events.append(
                {"xid": int(match["xid"]), "pci": match["pci"], "text": match["rest"].strip()[:200]}
            )
    return events


def evaluate_gpu_probe(
    host: str,
    reading: dict[str, Any],
    expected: GpuSpec,
    pins: NvidiaSpec,
    thresholds: GpuHealthThresholds,
    kernel_log: str = "",
) -> list[Finding]:
    """Every driver-layer check the plan lists for one host (:func:`host_checks`), each judged,
    or skipped with the reason it could not be."""
    nvml = reading.get("nvml")
    if expected.count == 0:
        if nvml != "ok":
            return [skipped(LAYER, host, "gpu-count", "no GPUs declared and no NVIDIA driver")]
        return [
            verdict(
                LAYER,
                host,
                "gpu-count",
                not reading.get("gpus"),
                f"{len(reading.get('gpus') or [])} GPU(s)",
                "0 (no GPUs declared)",
            )
        ]
    results = [
        verdict(
            LAYER,
            host,
            "nvml",
            nvml == "ok",
            "answering" if nvml == "ok" else f"{nvml}: {reading.get('error', 'no detail')}",
            f"NVML answering for {expected.count} x {expected.model}",
        )
    ]
    if nvml == "ok":
        gpus: list[dict[str, Any]] = reading.get("gpus", [])
        results += _fleet_checks(host, reading, gpus, expected, pins)
        by_index = {g.get("index"): g for g in gpus}
        for index in range(expected.count):
            gpu = by_index.get(index)
            if gpu is None:
                results += [
                    skipped(LAYER, host, gpu_check(name, index), f"NVML reports no GPU {index}")
                    for name in GPU_DEVICE_CHECKS
                ]
            else:
                results += _device_checks(host, index, gpu, thresholds)
    else:
        why = "NVML did not answer (see the nvml check)"
        results += [
            skipped(LAYER, host, name, why)
            for name in ("gpu-count", "driver-version", "cuda-version", "vbios-uniform")
        ]
        results += [
            skipped(LAYER, host, gpu_check(name, index), why)
            for index in range(expected.count)
            for name in GPU_DEVICE_CHECKS
        ]
    results.append(_xid_check(host, kernel_log, thresholds))
    return results


def _fleet_checks(
    host: str,
    reading: dict[str, Any],
    gpus: list[dict[str, Any]],
    expected: GpuSpec,
    pins: NvidiaSpec,
) -> list[Finding]:
    model = GPU_MODELS[expected.model] if expected.model else None
    names = [g.get("name") or "?" for g in gpus]
    matching = [n for n in names if model and model.nvml_name_fragment in n]
    results = [
        verdict(
            LAYER,
            host,
            "gpu-count",
            len(matching) == expected.count and len(gpus) == expected.count,
            f"{len(gpus)} GPU(s): {', '.join(sorted(set(names))) or 'none'}",
            f"{expected.count} x {expected.model}",
        ),
        verdict(
            LAYER,
            host,
            "driver-version",
            reading.get("driver_version") == pins.driver_version,
            reading.get("driver_version"),
            pins.driver_version,
        ),
    ]
    cuda = reading.get("cuda_driver_version")
    wanted_cuda = ".".join(pins.cuda_version.split(".")[:2])
    results.append(
        verdict(
            LAYER,
            host,
            "cuda-version",
            cuda is not None and _version_tuple(cuda) >= _version_tuple(wanted_cuda),
            cuda,
            f">= {wanted_cuda} (supports the pinned CUDA)",
        )
    )
    vbios = sorted({str(g.get("vbios")) for g in gpus})
    results.append(
        verdict(
            LAYER,
            host,
            "vbios-uniform",
            len(vbios) <= 1,
            ", ".join(vbios),
            "one VBIOS version on every GPU",
        )
    )
    return results


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def _device_checks(
    host: str, index: int, gpu: dict[str, Any], limits: GpuHealthThresholds
) -> list[Finding]:
    """One result per planned per-GPU check: a query this GPU does not support (NVML answered
    "not supported", recorded as null) gets its check skipped with that reason."""
    results = [
        verdict(
            LAYER,
            host,
            gpu_check("persistence-mode", index),
            gpu.get("persistence_mode") == 1,
            _on_off(gpu.get("persistence_mode")),
            "enabled",
        ),
    ]
    ecc = gpu.get("ecc_mode")
    if ecc is not None:
        results.append(
            verdict(
                LAYER,
                host,
                gpu_check("ecc-mode", index),
                ecc["current"] == 1 and ecc["pending"] == 1,
                f"current {_on_off(ecc['current'])}, pending {_on_off(ecc['pending'])}",
                "enabled, nothing pending",
            )
        )
    mig = gpu.get("mig_mode")
    if mig is not None:
        results.append(
            verdict(
                LAYER,
                host,
                gpu_check("mig-mode-settled", index),
                mig["current"] == mig["pending"],
                f"current {mig['current']}, pending {mig['pending']}",
                "current == pending",
            )
        )
    errors = gpu.get("ecc_uncorrected_volatile")
    if errors is not None:
        results.append(
            verdict(
                LAYER,
                host,
                gpu_check("ecc-uncorrected-volatile", index),
                errors <= limits.max_uncorrected_volatile_ecc,
                errors,
                f"<= {limits.max_uncorrected_volatile_ecc}",
            )
        )
    rows = gpu.get("remapped_rows")
    if rows is not None:
        results.append(
            verdict(
                LAYER,
                host,
                gpu_check("row-remap-pending", index),
                rows["pending"] <= limits.max_pending_row_remaps,
                rows["pending"],
                f"<= {limits.max_pending_row_remaps} (a reset applies pending remaps)",
            )
        )
        results.append(
            verdict(
                LAYER,
                host,
                gpu_check("row-remap-failure", index),
                not rows["failure"],
                "yes" if rows["failure"] else "no",
                "no (a failure means the GPU needs service)",
            )
        )
    pending_pages = gpu.get("retired_pages_pending")
    if pending_pages is not None:
        results.append(
            verdict(
                LAYER,
                host,
                gpu_check("retired-pages-pending", index),
                pending_pages == 0,
                _on_off(pending_pages),
                "none pending",
            )
        )
    action = gpu.get("recovery_action")
    if action is not None:
        results.append(
            verdict(
                LAYER,
                host,
                gpu_check("recovery-action", index),
                action == 0,
                RECOVERY_ACTIONS.get(action, str(action)),
                "none",
            )
        )
    results += _link_and_thermal_checks(host, index, gpu, limits)
    judged = {r.check for r in results}
    results += [
        skipped(LAYER, host, gpu_check(name, index), "NVML reports no value on this GPU")
        for name in GPU_DEVICE_CHECKS
        if gpu_check(name, index) not in judged
    ]
    order = {gpu_check(name, index): i for i, name in enumerate(GPU_DEVICE_CHECKS)}
    return sorted(results, key=lambda r: order[r.check])


def _link_and_thermal_checks(
    host: str, index: int, gpu: dict[str, Any], limits: GpuHealthThresholds
) -> list[Finding]:
    results = []
    pcie = gpu.get("pcie") or {}
    if pcie.get("width") is not None and pcie.get("max_width") is not None:
        results.append(
            verdict(
                LAYER,
                host,
                gpu_check("pcie-width", index),
                pcie["width"] >= pcie["max_width"],
                f"x{pcie['width']}",
                f"x{pcie['max_width']} (the link's maximum)",
            )
        )
    reasons = gpu.get("clock_event_reasons")
    if reasons is not None:
        active = [name for bit, name in THROTTLE_NAMES.items() if reasons & bit]
        results.append(
            verdict(
                LAYER,
                host,
                gpu_check("throttle", index),
                not active,
                ", ".join(active) or "none",
                "no HW slowdown, thermal slowdown or power brake",
            )
        )
    temperature, slowdown = gpu.get("temperature_c"), gpu.get("slowdown_threshold_c")
    if temperature is not None and slowdown is not None:
        margin = slowdown - temperature
        results.append(
            verdict(
                LAYER,
                host,
                gpu_check("thermal-margin", index),
                margin >= limits.min_thermal_margin_c,
                f"{margin} C ({temperature} C, slowdown at {slowdown} C)",
                f">= {limits.min_thermal_margin_c} C",
            )
        )
    nvlink = gpu.get("nvlink") or {}
    if nvlink.get("links"):
        results.append(
            verdict(
                LAYER,
                host,
                gpu_check("nvlink", index),
                not nvlink["down"],
                f"{len(nvlink['down'])} of {nvlink['links']} down {nvlink['down'] or ''}".strip(),
                "all links up",
            )
        )
    fabric = gpu.get("fabric")
    if fabric is not None:
        ok = fabric["state"] == FABRIC_COMPLETED and fabric["status"] == NVML_SUCCESS
        results.append(
            verdict(
                LAYER,
                host,
                gpu_check("fabric", index),
                ok,
                f"state {fabric['state']}, status {fabric['status']}",
                f"state {FABRIC_COMPLETED} (completed), status 0",
            )
        )
    stray = [p for p in gpu.get("processes", []) if not p.get("in_pod")]
    results.append(
        verdict(
            LAYER,
            host,
            gpu_check("stray-processes", index),
            limits.allow_stray_processes or not stray,
            ", ".join(f"{p['name']}[{p['pid']}]" for p in stray) or "none",
            "no compute process outside Kubernetes pods",
        )
    )
    return results


def _xid_check(host: str, kernel_log: str, limits: GpuHealthThresholds) -> Finding:
    events = parse_xids(kernel_log)
    fatal = [e for e in events if e["xid"] in limits.fatal_xids]
    observed = ", ".join(f"Xid {e['xid']} on {e['pci']}" for e in fatal) or (
        f"none fatal ({len(events)} other XID event(s))" if events else "none"
    )
    return verdict(
        LAYER,
        host,
        "xid-fatal",
        not fatal,
        observed,
        f"no XID in {sorted(limits.fatal_xids)} since boot",
        events=events[:50],
    )


def _on_off(value: object) -> str:
    if value is None:
        return "unknown"
    return (
        {1: "enabled", 0: "disabled"}.get(value, str(value))
        if isinstance(value, int)
        else str(value)
    )
