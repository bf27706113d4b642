"""The ``ClusterAccess`` dynamic provider: wait for every node, then read the kubeconfig back.

This module path and the class names are part of every stack's state (Pulumi pickles the provider
by reference): moving or renaming them breaks ``pulumi destroy`` of existing stacks. Keep them.

* create / update: over the first server's pinned SSH session, list the nodes until every node
  of the stack is registered and Ready (bounded by ``readyTimeoutSeconds``; the error names the
  nodes still missing or not Ready), then read K3s's admin kubeconfig and point its server URL at
  an address clients outside the cluster can reach.
* read (``pulumi refresh``): the same without waiting: ``readyNodes`` then shows a node that is
  gone or not Ready, and the next ``pulumi up`` waits for it again.
* delete: nothing; the cluster goes with the hosts.

The kubeconfig is a secret output and never appears in a log line or an error message.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from typing import Any

import yaml
from pulumi import Input, Output, ResourceOptions
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

from components.providers.connection import host_target, log_line, missing_inputs, ssh_settings

K3S_KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"
K3S_KUBECTL = "/usr/local/bin/k3s kubectl"  # where the install script puts k3s
# The inputs that mean the kubeconfig must be read again.
# How long the nodes of the stack may take to register and become Ready, by default.
READY_TIMEOUT_SECONDS = 900
REREAD_KEYS = ("address", "port", "user", "hostKey", "nodes", "serverUrl", "kubeconfigPath")
REQUIRED_KEYS = ("host", "address", "port", "user", "privateKey", "nodes", "serverUrl")


class ClusterNotReady(Exception):
    """Nodes of the stack were still missing or not Ready when the wait ran out."""


class KubeconfigUnreadable(Exception):
    """The server's kubeconfig could not be read or parsed (its content is never quoted)."""


@dataclass(frozen=True)
class NodeReadiness:
    """What ``kubectl get nodes -o json`` says about the nodes a stack expects."""

    ready: tuple[str, ...]
    not_ready: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.not_ready and not self.missing

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"not registered: {', '.join(self.missing)}")
        if self.not_ready:
            parts.append(f"registered but not Ready: {', '.join(self.not_ready)}")
        return "; ".join(parts) or f"all {len(self.ready)} node(s) Ready"


def node_readiness(nodes_json: str, expected: list[str]) -> NodeReadiness:
    """Judge a node list (pure): which expected nodes are Ready, not Ready, or absent."""
    try:
        items = json.loads(nodes_json or "{}").get("items", [])
    except ValueError:
        items = []
    status: dict[str, bool] = {}
    for node in items:
        name = node.get("metadata", {}).get("name")
        conditions = node.get("status", {}).get("conditions", [])
        status[str(name)] = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
        )
    return NodeReadiness(
        ready=tuple(n for n in expected if status.get(n) is True),
        not_ready=tuple(n for n in expected if status.get(n) is False),
        missing=tuple(n for n in expected if n not in status),
    )


def rewrite_server_url(kubeconfig_text: str, server_url: str) -> str:
    """The kubeconfig with every cluster's ``server`` set to ``server_url`` (pure)."""
    try:
        data = yaml.safe_load(kubeconfig_text)
        clusters = data["clusters"]
        for entry in clusters:
            entry["cluster"]["server"] = server_url
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        # the text holds a client key: name the problem, never the content
        raise KubeconfigUnreadable(
            f"not a kubeconfig with clusters[].cluster.server ({type(exc).__name__})"
        ) from None
    return yaml.safe_dump(data, sort_keys=False)


def _session(props: dict[str, Any]) -> Any:
    from components.execution.ssh import HostSession  # noqa: PLC0415 - provider process only

    return HostSession(host_target(props), ssh_settings(props))


def _log(line: str) -> None:
    log_line("cluster-access", line)


def _list_nodes(session: Any, props: dict[str, Any]) -> str | None:
    """``kubectl get nodes -o json`` on the server, or None when it failed."""
    kubectl = str(props.get("kubectl") or K3S_KUBECTL)
    result = session.run_script(f"{kubectl} get nodes -o json\n", timeout=60)
    return str(result.stdout) if result.exit_status == 0 else None


def wait_for_nodes(session: Any, props: dict[str, Any]) -> NodeReadiness:
    """Poll the node list until every expected node is Ready, or raise when time runs out."""
    expected = [str(n) for n in props["nodes"]]
    timeout = float(props.get("readyTimeoutSeconds") or READY_TIMEOUT_SECONDS)
    poll = float(props.get("pollSeconds") or 5)
    deadline = time.monotonic() + timeout
    last = NodeReadiness((), (), tuple(expected))
    while True:
        listed = _list_nodes(session, props)
        if listed is not None:
            last = node_readiness(listed, expected)
            if last.complete:
                return last
        if time.monotonic() + poll > deadline:
            raise ClusterNotReady(
                f"{session.target.where}: after {timeout:.0f} s the cluster is not ready: "
                f"{last.describe()} (expected {', '.join(expected)}; raise "
                "readyTimeoutSeconds if nodes legitimately take longer to join)"
            )
        _log(last.describe())
        time.sleep(poll)


def read_kubeconfig(session: Any, props: dict[str, Any]) -> str:
    path = str(props.get("kubeconfigPath") or K3S_KUBECONFIG)
    result = session.run_script(f"cat {shlex.quote(path)}\n", timeout=60)
    if result.exit_status != 0:
        raise KubeconfigUnreadable(
            f"{session.target.where}: cannot read {path}: {result.stderr_tail or 'no output'}"
        )
    return rewrite_server_url(result.stdout, str(props["serverUrl"]))


def current_readiness(session: Any, props: dict[str, Any]) -> NodeReadiness:
    """The nodes as they are now, in one look."""
    return node_readiness(_list_nodes(session, props) or "", [str(n) for n in props["nodes"]])


def access_cluster(props: dict[str, Any], *, wait: bool = True) -> dict[str, Any]:
    """Wait for the nodes (or look once) and read the kubeconfig; return the output properties."""
    session = _session(props)
    try:
        readiness = wait_for_nodes(session, props) if wait else current_readiness(session, props)
        kubeconfig = read_kubeconfig(session, props)
    finally:
        session.close()
    return {**props, "kubeconfig": kubeconfig, "readyNodes": list(readiness.ready)}


class ClusterAccessProvider(ResourceProvider):
    """See the module docstring."""

    serialize_as_secret_always = False

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = missing_inputs(news, REQUIRED_KEYS)
        if not str(news.get("serverUrl", "")).startswith("https://"):
            failures.append(CheckFailure("serverUrl", "expected an https:// URL"))
        return CheckResult(news, failures)

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(f"{props['host']}/kubeconfig", access_cluster(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in REREAD_KEYS if olds.get(k) != news.get(k)]
        # a refresh saw a node missing or not Ready: wait for it again
        incomplete = set(olds.get("readyNodes") or []) != {str(n) for n in news.get("nodes") or []}
        return DiffResult(changes=bool(changed) or incomplete, replaces=[], stables=["host"])

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(access_cluster(news))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_, access_cluster(props, wait=False))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        return None


class ClusterAccess(Resource, module="sovereign", name="ClusterAccess"):
    """The cluster's kubeconfig, read once every node is Ready. Outputs: ``kubeconfig`` (secret),
    ``readyNodes``."""

    kubeconfig: Output[str]
    readyNodes: Output[list[str]]  # noqa: N815 - the property's name in the state

    def __init__(
        self,
        name: str,
        props: dict[str, Input[Any]],
        opts: ResourceOptions | None = None,
    ) -> None:
        props = {"kubeconfig": None, "readyNodes": None, **props}
        opts = ResourceOptions.merge(
            opts, ResourceOptions(additional_secret_outputs=["kubeconfig"])
        )
        super().__init__(ClusterAccessProvider(), name, props, opts)
