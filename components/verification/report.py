"""The evidence report: JSON for machines, Markdown for people, JUnit XML for CI.

Meant to be archived with each rollout (EU AI Act Art. 19 asks providers to keep logs at least six
months): it records when, with which tool and database versions, against which stack config (by
hash), and every check with its result and evidence.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from components.config.models import StackConfig
from components.plan.checks import LAYERS
from components.verification.geoip import ATTRIBUTION
from components.verification.results import Finding
from components.verification.runner import Verification


def config_hash(config: StackConfig) -> str:
    """sha256 of the effective config (secrets excluded), so a report names exactly what it checked."""
    data = config.model_dump(mode="json", by_alias=True, exclude={"k3s_token"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in (
        "sovereign-inference",
        "nvidia-ml-py",
        "pytest-testinfra",
        "maxminddb",
        "paramiko",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _check_row(r: Finding) -> dict[str, Any]:
    """One check as the report records it; a skipped check carries its reason, a judged one the
    evidence it was judged on (its own, or the observation when it has nothing more)."""
    row: dict[str, Any] = {
        "id": r.id,
        "layer": r.layer,
        "host": r.host,
        "check": r.check,
        "status": r.status,
        "observed": r.observed,
        "expected": r.expected,
    }
    if r.status == "skip":
        row["reason"] = r.observed
        row["evidence"] = r.evidence
    else:
        row["evidence"] = r.evidence or {"observed": r.observed}
    return row


def evidence(
    config: StackConfig,
    verification: Verification,
    stack_file: str,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """The report: ``passed`` (no check failed), what was checked against what, every host with
    its address and pinned host key, and every check with its result and evidence."""
    now = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    failed = sum(r.status == "fail" for r in verification.results)
    return {
        "report": "sovereign-inference post-deploy verification",
        "passed": failed == 0,
        "generated_at": now.isoformat(),
        "retain_until": (now + dt.timedelta(days=183)).date().isoformat(),
        "environment": config.environment,
        "stack_file": stack_file,
        "stack_config_sha256": config_hash(config),
        "tools": _versions(),
        "geoip_database": verification.geoip or {"status": "missing"},
        "geoip_attribution": ATTRIBUTION,
        "duration_seconds": round(verification.seconds, 2),
        "summary": {
            "hosts": len(verification.hosts),
            "checks": len(verification.results),
            "passed": sum(r.status == "pass" for r in verification.results),
            "failed": failed,
            "skipped": sum(r.status == "skip" for r in verification.results),
        },
        "hosts": [
            {
                "name": h.host,
                "address": h.address,
                "ssh_port": h.port,
                "ssh_host_key": h.host_key,
                "seconds": round(h.seconds, 2),
                "reachable": h.facts is not None,
                "error": h.error,
            }
            for h in verification.hosts
        ],
        "checks": [_check_row(r) for r in verification.results],
    }


def markdown(report: dict[str, Any]) -> str:
    summary = report["summary"]
    verdict = "PASS" if report["passed"] else "FAIL"
    lines = [
        f"# Verification of `{report['environment']}`: {verdict}",
        "",
        f"- generated: {report['generated_at']} (keep until at least {report['retain_until']})",
        f"- stack: `{report['stack_file']}`, config sha256 `{report['stack_config_sha256']}`",
        f"- hosts: {summary['hosts']}; checks: {summary['checks']} "
        f"({summary['passed']} passed, {summary['failed']} failed, {summary['skipped']} skipped)",
        "- tools: " + ", ".join(f"{k} {v}" for k, v in report["tools"].items()),
        f"- geolocation: {report['geoip_database'].get('name', 'missing')} built "
        f"{report['geoip_database'].get('built', '-')}; {report['geoip_attribution']}",
        "",
        "| host | address | SSH host key |",
        "|---|---|---|",
        *(
            f"| {h['name']} | {h['address']}:{h['ssh_port']} | {h['ssh_host_key'] or '-'} |"
            for h in report["hosts"]
        ),
        "",
    ]
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    if failed:
        lines += ["## Failures", ""]
        lines += [
            f"- **[{c['layer']}] {c['host']} {c['check']}**: observed {c['observed']}, expected {c['expected']}"
            for c in failed
        ]
        lines.append("")
    for layer in LAYERS:
        rows = [c for c in report["checks"] if c["layer"] == layer]
        if not rows:
            continue
        lines += [
            f"## {layer}",
            "",
            "| host | check | result | observed | expected |",
            "|---|---|---|---|---|",
        ]
        for c in rows:
            cells = [c["host"], c["check"], c["status"], c["observed"], c["expected"]]
            lines.append("| " + " | ".join(str(x).replace("|", "\\|") for x in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def junit_xml(report: dict[str, Any]) -> str:
    suites = ET.Element(
        "testsuites",
        name="sovereign verify",
        tests=str(report["summary"]["checks"]),
        failures=str(report["summary"]["failed"]),
    )
    for layer in LAYERS:
        rows = [c for c in report["checks"] if c["layer"] == layer]
        if not rows:
            continue
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=layer,
            tests=str(len(rows)),
            failures=str(sum(c["status"] == "fail" for c in rows)),
            skipped=str(sum(c["status"] == "skip" for c in rows)),
        )
        for c in rows:
            case = ET.SubElement(
                suite, "testcase", classname=f"{layer}.{c['host']}", name=c["check"]
            )
            if c["status"] == "fail":
                ET.SubElement(
                    case, "failure", message=f"observed {c['observed']}, expected {c['expected']}"
                )
            elif c["status"] == "skip":
                ET.SubElement(case, "skipped", message=c["observed"])
    return ET.tostring(suites, encoding="unicode")


def write_report(report: dict[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = report["generated_at"].replace(":", "").replace("-", "")
    base = directory / f"verify-{report['environment']}-{stamp}"
    files = {
        base.with_suffix(".json"): json.dumps(report, indent=2, sort_keys=True) + "\n",
        base.with_suffix(".md"): markdown(report) + "\n",
        base.with_suffix(".junit.xml"): junit_xml(report) + "\n",
    }
    for path, text in files.items():
        path.write_text(text)
    return list(files)
