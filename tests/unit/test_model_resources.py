"""Model pods hold CPU and host memory by request: not BestEffort by Kubernetes' own rule, with a
memory request that covers what the pinned vLLM and Run:ai streamer really allocate, and
``sovereign size`` says that figure."""

from __future__ import annotations

import ast
import json
import os
import re
import sys
import types
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml
from sovereign_weights.units import GIB

from components.cli import EXIT_NOT_SIZED, main
from components.config import StackConfig, load_stack_file
from components.config.models import ModelSpec
from components.plan.kubernetes import InferenceStackSpec, inference_plan
from components.plan.kubernetes.serving import model_host_memory, weight_bytes_bound
from components.plan.sizing import (
    GPU_WORKER_PROCESS_BYTES,
    SERVER_PROCESS_BYTES,
    STREAMER_MEMORY_LIMIT_BYTES,
    replica_host_memory,
)

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
QOS_SOURCE = DATA / "kubernetes-1.31.6" / "qos.go"
VLLM_LOADER = DATA / "vllm-0.11.0" / "runai_streamer_loader.py.txt"
STREAMER_BUFFER = DATA / "runai-model-streamer-0.14.0" / "requests_iterator.py.txt"
STREAMER_ENV = ("RUNAI_STREAMER_CONCURRENCY", "RUNAI_STREAMER_MEMORY_LIMIT")

SERVING_STACKS = [
    p
    for p in sorted((ROOT / "stacks").glob("Pulumi.*.yaml"))
    if load_stack_file(p).inference.models
]


def model_pods() -> Iterator[tuple[str, ModelSpec, dict[str, Any]]]:
    for path in SERVING_STACKS:
        config: StackConfig = load_stack_file(path)
        plan = inference_plan(InferenceStackSpec.from_stack(config))
        for model, objects in zip(config.inference.models, plan.models, strict=True):
            yield f"{path.name}:{model.name}", model, objects.deployment["spec"]["template"]["spec"]


MODEL_PODS = list(model_pods())
POD_IDS = [name for name, _, _ in MODEL_PODS]


# --- Kubernetes quantities and QoS ---------------------------------------------------------------

_SUFFIX = {
    "": Fraction(1),
    "m": Fraction(1, 1000),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
}


def quantity(text: str) -> Fraction:
    """A Kubernetes resource quantity (the suffixes of apimachinery's ``resource.Quantity``)."""
    found = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)", str(text))
    assert found, f"not a quantity: {text!r}"
    assert found.group(2) in _SUFFIX, f"unknown suffix: {text!r}"
    return Fraction(found.group(1)) * _SUFFIX[found.group(2)]


QOS_COMPUTE_RESOURCES = {"cpu", "memory"}


def _add_compute_quantities(listed: dict[str, str], totals: dict[str, Fraction]) -> set[str]:
    """The "process requests" / "process limits" loops of ``ComputePodQOS``: add each CPU or
    memory quantity above zero to ``totals``; return the names found."""
    found = set()
    for name, text in listed.items():
        if name not in QOS_COMPUTE_RESOURCES:
            continue
        if quantity(text) > 0:
            found.add(name)
            totals[name] = totals.get(name, Fraction(0)) + quantity(text)
    return found


def compute_pod_qos(pod_spec: dict[str, Any]) -> str:
    """Port of ``ComputePodQOS`` (tests/data/kubernetes-1.31.6/qos.go), statement by statement."""
    requests: dict[str, Fraction] = {}
    limits: dict[str, Fraction] = {}
    is_guaranteed = True
    all_containers = [*pod_spec["containers"], *pod_spec.get("initContainers", [])]
    for container in all_containers:
        resources = container.get("resources", {})
        _add_compute_quantities(resources.get("requests", {}), requests)
        limits_found = _add_compute_quantities(resources.get("limits", {}), limits)
        if not limits_found >= {"memory", "cpu"}:
            is_guaranteed = False
    if not requests and not limits:
        return "BestEffort"
    if is_guaranteed:
        for name, request in requests.items():
            if name not in limits or limits[name] != request:
                is_guaranteed = False
                break
    if is_guaranteed and len(requests) == len(limits):
        return "Guaranteed"
    return "Burstable"


def test_the_qos_port_states_the_facts_of_the_pinned_kubernetes_source() -> None:
    source = QOS_SOURCE.read_text()
    # only CPU and memory decide the class: a GPU request alone leaves a pod BestEffort
    assert (
        "supportedQoSComputeResources = sets.NewString(string(core.ResourceCPU), "
        "string(core.ResourceMemory))"
    ) in source
    assert "allContainers = append(allContainers, pod.Spec.InitContainers...)" in source
    assert source.count("if quantity.Cmp(zeroQuantity) == 1 {") == 2
    assert "qosLimitsFound.HasAll(string(core.ResourceMemory), string(core.ResourceCPU))" in source
    assert "return core.PodQOSBestEffort" in source


def test_a_pod_requesting_only_gpus_is_best_effort_by_that_rule() -> None:
    """What every model pod was: the class the kubelet evicts first under memory pressure."""
    gpus_only = {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}
    pod = {"containers": [{"name": "server", "resources": gpus_only}], "initContainers": []}
    assert compute_pod_qos(pod) == "BestEffort"


@pytest.mark.parametrize(("name", "model", "pod"), MODEL_PODS, ids=POD_IDS)
def test_model_pods_are_not_best_effort_by_kubernetes_own_rule(
    name: str, model: ModelSpec, pod: dict[str, Any]
) -> None:
    assert compute_pod_qos(pod) in {"Burstable", "Guaranteed"}


# --- what the pinned upstreams allocate -----------------------------------------------------------


def server_of(pod: dict[str, Any]) -> dict[str, Any]:
    (server,) = [c for c in pod["containers"] if c["name"] == "server"]
    assert isinstance(server, dict)
    return server


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def vllm_loader_environment(
    extra_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Run vLLM v0.11.0's ``RunaiModelStreamerLoader.__init__`` (without its base class, which
    only stores the config) and return the streamer variables it leaves in the environment."""
    tree = ast.parse(VLLM_LOADER.read_text())
    (loader,) = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    (init,) = [n for n in loader.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"]
    first = init.body[0]
    assert isinstance(first, ast.Expr)
    assert "super().__init__" in ast.unparse(first)
    init.body = init.body[1:]
    init.name = "loader_init"
    namespace: dict[str, Any] = {"os": os}
    exec(compile(ast.Module([init], []), str(VLLM_LOADER), "exec"), namespace)
    for variable in STREAMER_ENV:
        monkeypatch.delenv(variable, raising=False)
    config = types.SimpleNamespace(model_loader_extra_config=extra_config)
    namespace["loader_init"](None, config)
    return {k: os.environ[k] for k in STREAMER_ENV if k in os.environ}


def streamer_buffer_bytes(tensor_bytes: list[int], monkeypatch: pytest.MonkeyPatch) -> int:
    """The CPU buffer runai-model-streamer 0.14.0 allocates for one file of these tensors, under
    the current environment. numpy is not installed here: a stand-in records the size of the one
    ``np.empty`` the streamer calls."""
    allocated: list[int] = []
    numpy = types.ModuleType("numpy")
    numpy.uint8 = "uint8"  # type: ignore[attr-defined]
    numpy.empty = lambda size, dtype: allocated.append(size)  # type: ignore[attr-defined]
    humanize = types.ModuleType("humanize")
    humanize.naturalsize = lambda size, binary: str(size)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "numpy", numpy)
    monkeypatch.setitem(sys.modules, "humanize", humanize)
    module = types.ModuleType("runai_requests_iterator")
    exec(compile(STREAMER_BUFFER.read_text(), str(STREAMER_BUFFER), "exec"), module.__dict__)
    chunks = module.FileChunks("model.safetensors", 0, tensor_bytes)
    module.FilesRequestsIteratorWithBuffer.with_memory_mode([chunks])
    (size,) = allocated
    return int(size)


def test_without_a_limit_the_pinned_streamer_takes_20_gb_per_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Why the limit is passed: the extra config the plan rendered before left it at the default."""
    env = vllm_loader_environment({"concurrency": 16}, monkeypatch)
    assert "RUNAI_STREAMER_MEMORY_LIMIT" not in env
    assert streamer_buffer_bytes([GIB] * 40, monkeypatch) == 20_000_000_000


@pytest.mark.parametrize(
    "tensor_bytes",
    [[GIB] * 40, [GIB // 4] * 3],
    ids=["checkpoint larger than the limit", "checkpoint smaller than the limit"],
)
def test_the_sizing_rule_is_the_pinned_streamers_own(
    tensor_bytes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    (_, _, pod), *_ = MODEL_PODS
    extra = json.loads(flag(server_of(pod)["args"], "--model-loader-extra-config"))
    env = vllm_loader_environment(extra, monkeypatch)
    assert env["RUNAI_STREAMER_MEMORY_LIMIT"] == str(STREAMER_MEMORY_LIMIT_BYTES)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    ours = replica_host_memory(1, sum(tensor_bytes)).streamer_bytes_per_worker
    assert streamer_buffer_bytes(tensor_bytes, monkeypatch) == ours


@pytest.mark.parametrize(("name", "model", "pod"), MODEL_PODS, ids=POD_IDS)
def test_the_memory_request_covers_streamer_buffers_shm_and_processes(
    name: str, model: ModelSpec, pod: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = server_of(pod)
    args = server["args"]
    # what the rendered arguments make the pinned loader and streamer allocate, per worker
    env = vllm_loader_environment(
        json.loads(flag(args, "--model-loader-extra-config")), monkeypatch
    )
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    largest_checkpoint = [GIB] * (weight_bytes_bound(model) // GIB)
    per_worker = streamer_buffer_bytes(largest_checkpoint, monkeypatch)
    workers = int(flag(args, "--tensor-parallel-size"))
    (shm,) = [v for v in pod["volumes"] if v["name"] == "shm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    shm_bytes = quantity(shm["emptyDir"]["sizeLimit"])
    processes = SERVER_PROCESS_BYTES + workers * GPU_WORKER_PROCESS_BYTES

    resources = server["resources"]
    request = quantity(resources["requests"]["memory"])
    assert request >= workers * per_worker + shm_bytes + processes
    # requested, not limited: an estimate must not become an OOM kill at start-up
    assert "memory" not in resources["limits"]
    assert quantity(resources["requests"]["cpu"]) >= 1 + workers
    # one formula: the Deployment asks for what sizing says
    assert request == model_host_memory(model).total_bytes


def test_a_bring_your_own_server_is_burstable_with_the_same_memory(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "stacks" / "Pulumi.staging.yaml").read_text())
    inference = data["config"]["sovereign-inference:inference"]
    inference["models"][0].update(
        image=inference["image"].replace("vllm/vllm-openai", "teams/sglang"),
        args=["python3", "-m", "sglang.launch_server", "--port", "8000"],
    )
    stack = tmp_path / "Pulumi.byo.yaml"
    stack.write_text(yaml.safe_dump(data))
    config = load_stack_file(stack)
    model = config.inference.models[0]
    assert model.image is not None
    plan = inference_plan(InferenceStackSpec.from_stack(config))
    pod = plan.models[0].deployment["spec"]["template"]["spec"]
    assert compute_pod_qos(pod) == "Burstable"
    memory = server_of(pod)["resources"]["requests"]["memory"]
    assert quantity(memory) == model_host_memory(model).total_bytes


# --- sovereign size ---------------------------------------------------------------------------------


def test_sovereign_size_prints_the_host_memory_a_replica_requests(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stack = ROOT / "stacks" / "Pulumi.prod-fra.yaml"
    config = load_stack_file(stack)
    plan = inference_plan(InferenceStackSpec.from_stack(config))
    # no manifest is kept in the checkout: not sized, host memory printed all the same
    code = main(["size", str(stack), "--offline", "--manifest-cache", str(ROOT / "nonexistent")])
    out = capsys.readouterr().out
    assert code == EXIT_NOT_SIZED
    for model, objects in zip(config.inference.models, plan.models, strict=True):
        pod = objects.deployment["spec"]["template"]["spec"]
        requested = quantity(server_of(pod)["resources"]["requests"]["memory"])
        (line,) = [ln for ln in out.splitlines() if ln.split()[0] == model.name]
        shown = re.search(r"host memory ([0-9.]+) GiB per replica", line)
        assert shown, line
        assert float(shown.group(1)) == pytest.approx(float(requested / GIB), abs=0.05)
        assert f"streamer {model.gpus_per_replica} x" in line
