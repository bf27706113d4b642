"""What ``sovereign render`` shows a reviewer: what a rollout would apply and check, as files.

Pure, like the rest of the plan: the files are built in memory; ``components.review_tree`` writes
them to disk.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from sovereign_gateway.auth import redacted_api_keys

from components.config.catalog import os_image
from components.config.models import PENDING_ADDRESS_SUFFIX, HostSpec, OvhOrder, StackConfig
from components.plan.checks import host_checks
from components.plan.cluster import node_labels
from components.plan.host_steps import render_host_steps
from components.plan.kubernetes import InferenceStackSpec, inference_plan
from components.plan.kubernetes.gateway import route_table

REDACTED = "[secret]"


class _PlainDumper(yaml.SafeDumper):
    """YAML for reviewers: a value used twice is written twice, never as an anchor."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _block_strings(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # multi-line values (route tables, chart values, key files) read as written, not as escapes
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_PlainDumper.add_representer(str, _block_strings)


def to_yaml(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_PlainDumper, sort_keys=False)


@dataclass(frozen=True)
class RenderedFile:
    """One file of the review tree: its path relative to the tree's root, text and mode."""

    path: str
    text: str
    mode: int = 0o644


def redacted_config(config: StackConfig) -> dict[str, Any]:
    """The effective config as JSON-able data; secrets appear only as a marker."""
    data: dict[str, Any] = config.model_dump(mode="json", by_alias=True)
    if config.k3s_token is not None:
        data["k3sToken"] = REDACTED
    return data


def render_files(config: StackConfig) -> list[RenderedFile]:
    """The review tree of ``config``, in a stable order.

    Layout::

        stack.json                      effective config (secrets redacted)
        hosts/<host>/NN-step.sh         the step scripts, in run order
        hosts/<host>/steps.json         step names, content hashes, pins, what each reads at
                                        run time (env: the hosts' addresses)
        hosts/<host>/checks.json        what verification expects on this host
        hosts/<host>/node-labels.json   labels the node will carry
        hosts/<host>/source.json        where the host comes from: its address and host key, or
                                        for an ordered machine what is ordered and where (its
                                        address shows in the steps' env as a placeholder)
        payloads/<sha>-<name>           files delivered with a step (e.g. nvidia-ml-py)
        kubernetes/NN-<kind>-[<namespace>-]<name>.yaml   every object, in apply order
        kubernetes/charts/<release>.yaml                 Helm releases: chart, version, values
        kubernetes/routes.json                           the gateway's route table
    """
    files: list[RenderedFile] = []

    def write(path: str, text: str, mode: int = 0o644) -> None:
        files.append(RenderedFile(path, text, mode))

    payloads_written: set[str] = set()
    write("stack.json", json.dumps(redacted_config(config), indent=2, sort_keys=True) + "\n")
    stack_config = config
    # an ordered machine's address is known after the order: the steps' env shows a placeholder
    config = config.with_pending_addresses()
    for host in config.hosts:
        host_dir = f"hosts/{host.name}"
        steps = render_host_steps(config, host)
        for step in steps:
            write(f"{host_dir}/{step.name}.sh", step.script, 0o755)
        index = []
        for s in steps:
            payload_files = {}
            for payload_name, data in sorted(s.payloads.items()):
                digest = hashlib.sha256(data).hexdigest()
                target = f"payloads/{digest[:16]}-{payload_name}"
                if target not in payloads_written:
                    payloads_written.add(target)
                    write(target, data.decode(errors="replace"))
                payload_files[payload_name] = {"sha256": digest, "file": target}
            index.append(
                {
                    "name": s.name,
                    "sha256": s.content_hash,
                    "pins": s.pins,
                    "secretEnv": list(s.secret_env),
                    "teardown": s.has_teardown,
                    "rebootAllowed": s.reboot_allowed,
                    "waitsFor": [f"{h}/{n}" for h, n in s.waits_for],
                    # read at run time, not from the script: the hosts' addresses
                    "env": s.env,
                    "payloads": payload_files,
                }
            )
        write(f"{host_dir}/steps.json", json.dumps(index, indent=2) + "\n")
        checks = [
            {"id": c.id, "layer": c.layer, "expected": c.expected}
            for c in host_checks(config, host)
        ]
        write(f"{host_dir}/checks.json", json.dumps(checks, indent=2) + "\n")
        write(
            f"{host_dir}/node-labels.json",
            json.dumps(node_labels(config, host), indent=2, sort_keys=True) + "\n",
        )
        declared = stack_config.host_named(host.name)
        write(f"{host_dir}/source.json", json.dumps(source_plan(declared), indent=2) + "\n")
    if config.inference.models:
        _render_inference(config, write)
    return files


def source_plan(host: HostSpec) -> dict[str, Any]:
    """Where a host comes from, for review: its address and pinned key, or for an ordered
    machine what ``components.sources`` orders, where, and where its address and key come from."""
    plan: dict[str, Any] = {"source": host.source, "provider": host.provider}
    pin = (
        f"pinned in the stack: {host.ssh.host_key}"
        if host.ssh.host_key
        else "pinned on first contact: the first SSH session that authenticates with the "
        "stack's key records it (stack output hosts[].hostKey); after that another key is refused"
    )
    if not host.ordered:
        plan["address"] = host.address
        plan["port"] = host.ssh.port
        plan["hostKey"] = (
            pin
            if host.ssh.host_key
            else "from the lab's inventory (lab up writes it)"
            if host.source == "lab"
            else "from the stack's inventory, or refused at the first step"
        )
        return plan
    order = host.scaleway if host.source == "scaleway" else host.ovh
    if order is None:  # the config refuses this
        return plan
    image = os_image(host.provider, order.kind, order.os)
    plan["order"] = order.model_dump(mode="json", by_alias=True, exclude_none=True)
    plan["order"]["image"] = (
        {"name": image.name, **({"version": image.version} if image.version else {})}
        if image
        else None
    )
    rented = isinstance(order, OvhOrder) and order.kind == "dedicated" and order.plan is None
    if rented:
        plan["order"]["what"] = "reinstall the rented server through the provider's install task"
    if isinstance(order, OvhOrder) and order.kind == "dedicated":
        plan["sshKey"] = f"installed with the system: {host.ssh.public_key}"
    else:
        plan["sshKey"] = (
            f"registered with {host.provider}, installed at boot: {host.ssh.public_key}"
        )
    what = "the rented server's public IPv4" if rented else "the machine's public IPv4"
    plan["address"] = (
        f"known after the order ({what}); the steps read it at run time, and their env in "
        f"steps.json shows {host.name}{PENDING_ADDRESS_SUFFIX} for it here"
    )
    plan["port"] = host.ssh.port
    plan["hostKey"] = pin
    plan["teardown"] = (
        "pulumi destroy runs this host's teardown steps first, then releases the machine"
        if not rented
        else "pulumi destroy runs this host's teardown steps; the rented server stays yours"
    )
    return plan


def _redacted_secret(obj: dict[str, Any]) -> dict[str, Any]:
    """A Secret as a reviewer sees it: which entries and lines, never their values (a stack file
    holds its secrets encrypted, so a digest computed here would not even be the deployed one)."""
    lines = {
        key: redacted_api_keys(text, REDACTED) for key, text in obj.get("stringData", {}).items()
    }
    return {**obj, "stringData": lines}


def _render_inference(config: StackConfig, write: Callable[[str, str], None]) -> None:
    spec = InferenceStackSpec.from_stack(config)
    plan = inference_plan(spec)
    objects = plan.objects()
    width = max(2, len(str(len(objects) - 1)))
    for i, planned in enumerate(objects):
        obj = _redacted_secret(planned) if planned["kind"] == "Secret" else planned
        meta = obj["metadata"]
        parts = [f"{i:0{width}d}", obj["kind"].lower(), meta.get("namespace"), meta["name"]]
        write("kubernetes/" + "-".join(p for p in parts if p) + ".yaml", to_yaml(obj))
    for chart in plan.charts:
        release = {
            "name": chart.name,
            "namespace": chart.namespace,
            "chart": chart.chart,
            "repository": chart.repository,
            "version": chart.version,
            "values": chart.values,
        }
        write(f"kubernetes/charts/{chart.name}.yaml", to_yaml(release))
    write("kubernetes/routes.json", route_table(spec).to_json())
