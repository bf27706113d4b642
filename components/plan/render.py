"""``sovereign render``: write what a rollout would apply and check, as files a reviewer reads."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from components.config.models import StackConfig
from components.plan.checks import host_checks
from components.plan.cluster import kubernetes_objects, node_labels
from components.plan.host_steps import render_host_steps

REDACTED = "[secret]"
MARKER = ".sovereign-render"


class RenderTargetNotEmpty(Exception):
    """The output directory holds files this tool did not write; nothing is overwritten."""


def _prepare_out_dir(out: Path) -> None:
    """Start from an empty tree so no stale file survives; never clear a foreign directory."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise RenderTargetNotEmpty(
                f"{out} is not empty and was not written by 'sovereign render'; "
                "choose an empty or new directory"
            )
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(
        "written by sovereign render; the whole tree is replaced on each run\n"
    )


def redacted_config(config: StackConfig) -> dict[str, Any]:
    """The effective config as JSON-able data; secrets appear only as a marker."""
    data: dict[str, Any] = config.model_dump(mode="json", by_alias=True)
    if config.k3s_token is not None:
        data["k3sToken"] = REDACTED
    return data


def render_stack(config: StackConfig, out: Path) -> list[Path]:
    """Write the review tree under ``out`` and return the files written, in a stable order.

    Layout::

        stack.json                      effective config (secrets redacted)
        hosts/<host>/NN-step.sh         the step scripts, in run order
        hosts/<host>/steps.json         step names, content hashes, pins
        hosts/<host>/checks.json        what verification expects on this host
        hosts/<host>/node-labels.json   labels the node will carry
        payloads/<sha>-<name>           files delivered with a step (e.g. nvidia-ml-py)
        kubernetes/NN-<kind>-<name>.yaml
    """
    _prepare_out_dir(out)
    written: list[Path] = []

    def write(path: Path, text: str, mode: int = 0o644) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
        written.append(path)

    write(out / "stack.json", json.dumps(redacted_config(config), indent=2, sort_keys=True) + "\n")
    for host in config.hosts:
        host_dir = out / "hosts" / host.name
        steps = render_host_steps(config, host)
        for step in steps:
            write(host_dir / f"{step.name}.sh", step.script, 0o755)
        index = []
        for s in steps:
            payload_files = {}
            for payload_name, data in sorted(s.payloads.items()):
                digest = hashlib.sha256(data).hexdigest()
                target = out / "payloads" / f"{digest[:16]}-{payload_name}"
                if not target.exists():
                    write(target, data.decode(errors="replace"))
                payload_files[payload_name] = {"sha256": digest, "file": f"payloads/{target.name}"}
            index.append(
                {
                    "name": s.name,
                    "sha256": s.content_hash,
                    "pins": s.pins,
                    "secretEnv": list(s.secret_env),
                    "teardown": s.has_teardown,
                    "rebootAllowed": s.reboot_allowed,
                    "waitsFor": [f"{h}/{n}" for h, n in s.waits_for],
                    "payloads": payload_files,
                }
            )
        write(host_dir / "steps.json", json.dumps(index, indent=2) + "\n")
        checks = [
            {"id": c.id, "layer": c.layer, "expected": c.expected}
            for c in host_checks(config, host)
        ]
        write(host_dir / "checks.json", json.dumps(checks, indent=2) + "\n")
        write(
            host_dir / "node-labels.json",
            json.dumps(node_labels(config, host), indent=2, sort_keys=True) + "\n",
        )
    for i, obj in enumerate(kubernetes_objects(config)):
        name = f"{i:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        write(out / "kubernetes" / name, yaml.safe_dump(obj, sort_keys=False))
    return written
