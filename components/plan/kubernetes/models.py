"""Per model: the serving Deployment (replicas owned by KEDA), its Service and its ScaledObject."""

from __future__ import annotations

import json
import math
from pathlib import PurePosixPath
from typing import Final

from sovereign_gateway.ports import SCALER_GRPC_PORT
from sovereign_weights.layout import CachePaths

from components.config.catalog import GPU_MODELS
from components.config.models import ModelSpec
from components.plan.kubernetes.objects import (
    GPU_TOLERATIONS,
    Obj,
    gpu_node_expression,
    metadata,
    required_node_affinity,
    residency_expression,
    restricted_container,
    restricted_pod,
    root_writer_container,
)
from components.plan.kubernetes.spec import (
    GATEWAY,
    GATEWAY_NAMESPACE,
    GPU_MODEL_LABEL,
    GPU_RESOURCE,
    MODEL_LABEL,
    MODEL_PORT,
    MODELS_NAMESPACE,
    OBJECT_STORE_CREDENTIALS,
    RUNTIME_CLASS,
    InferenceStackSpec,
    service_host,
)

GIB: Final = 1024**3
# Sizing of the startup probe. The weights cannot be larger than the GPU memory a replica asks for,
# so that bounds what must be read. 1 GiB/s is a floor for one datacenter NVMe drive (PCIe 4.0
# drives read 3-7 GB/s sequentially; the cache is a RAID0 of them), and the streaming loader reads
# at close to disk speed. Engine start (CUDA context, NCCL for tensor parallelism, CUDA graph
# capture, compilation on a cold compile cache) gets a fixed allowance on top.
CACHE_READ_BYTES_PER_SECOND: Final = GIB
ENGINE_START_ALLOWANCE_SECONDS: Final = 300
STARTUP_PROBE_PERIOD_SECONDS: Final = 10
# Threads reading safetensors from the node cache into pinned memory (Run:ai Model Streamer).
STREAMER_CONCURRENCY: Final = 16
# vLLM's OpenAI server module: present in every vLLM release and accepts --model.
VLLM_COMMAND: Final = ("python3", "-m", "vllm.entrypoints.openai.api_server")
WEIGHTS_COMMAND: Final = ("sovereign-weights",)
# Environment every inference container carries so no usage data leaves the EU: vLLM's usage
# stats, the Hugging Face hub's telemetry, and the cross-tool DO_NOT_TRACK convention. Verification
# holds running pods to the same map.
TELEMETRY_OPT_OUTS: Final = {
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
# Set on every serving container: no weights fetched from the Hugging Face hub, no usage reports.
OFFLINE_ENV: Final = {"HF_HUB_OFFLINE": "1", **TELEMETRY_OPT_OUTS}
# The serving container's own writable places (its image filesystem is read-only).
SCRATCH_DIR: Final = "/tmp"  # noqa: S108 - an emptyDir mounted there, private to the pod
SERVER_UID: Final = 1000
CACHE_VOLUME: Final = "weights-cache"


def weights_container(
    spec: InferenceStackSpec, name: str, args: list[str], resources: Obj | None = None
) -> Obj:
    """A ``sovereign-weights`` container (the model's init container, the warmer): the weights
    image, the optional object-store credentials, offline and without telemetry, root so it can
    write the node cache. Callers add the volume mounts."""
    container: Obj = {
        "name": name,
        "image": spec.inference.weights_image,
        "command": list(WEIGHTS_COMMAND),
        "args": args,
        "envFrom": [{"secretRef": {"name": OBJECT_STORE_CREDENTIALS, "optional": True}}],
        "env": [{"name": k, "value": v} for k, v in sorted(OFFLINE_ENV.items())],
    }
    if resources is not None:
        container["resources"] = resources
    container["securityContext"] = root_writer_container()
    return container


def cache_paths(spec: InferenceStackSpec, model: ModelSpec) -> CachePaths:
    """Where ``model``'s verified copy lives on a node (the same path inside the pod)."""
    # CachePaths builds pathlib paths; the node is POSIX whatever renders the plan
    return CachePaths(
        PurePosixPath(spec.cache_mount_point),  # type: ignore[arg-type]
        model.name,
        model.source.revision,
    )


def fitting_gpu_models(model: ModelSpec) -> list[str]:
    """GPU models on which one replica fits (``gpu.model`` when the model names one)."""
    if model.gpu is not None:
        return [model.gpu.model]
    return sorted(
        name
        for name, gpu in GPU_MODELS.items()
        if gpu.memory_gib * model.gpus_per_replica >= model.min_gpu_memory_gib
    )


def weight_bytes_bound(model: ModelSpec) -> int:
    """An upper bound on the weights' size: the GPU memory one replica is given."""
    if model.min_gpu_memory_gib:
        return model.min_gpu_memory_gib * GIB
    smallest = min(GPU_MODELS[name].memory_gib for name in fitting_gpu_models(model))
    return smallest * model.gpus_per_replica * GIB


def startup_budget_seconds(model: ModelSpec) -> int:
    """How long a replica may take from container start to a healthy server."""
    read = math.ceil(weight_bytes_bound(model) / CACHE_READ_BYTES_PER_SECOND)
    return read + ENGINE_START_ALLOWANCE_SECONDS


def model_labels(model: ModelSpec) -> dict[str, str]:
    return {MODEL_LABEL: model.name}


def server_args(spec: InferenceStackSpec, model: ModelSpec) -> list[str]:
    """vLLM's arguments from config; a bring-your-own image gets ``args`` alone."""
    if model.image is not None:
        return list(model.args)
    args = [
        "--model",
        str(cache_paths(spec, model).complete_dir),
        "--served-model-name",
        model.served,
        "--tensor-parallel-size",
        str(model.gpus_per_replica),
        "--host",
        "0.0.0.0",  # noqa: S104 - the pod's own address; the NetworkPolicy admits the gateway only
        "--port",
        str(MODEL_PORT),
        "--load-format",
        "runai_streamer",
        "--model-loader-extra-config",
        json.dumps({"concurrency": STREAMER_CONCURRENCY}),
    ]
    if model.max_model_len is not None:
        args += ["--max-model-len", str(model.max_model_len)]
    return args + list(model.args)


def server_env(spec: InferenceStackSpec, model: ModelSpec) -> list[Obj]:
    env = {
        **model.env,
        # what a bring-your-own server needs to find its weights and listen where probes look
        "SOVEREIGN_MODEL_DIR": str(cache_paths(spec, model).complete_dir),
        "SOVEREIGN_SERVED_NAME": model.served,
        "SOVEREIGN_PORT": str(MODEL_PORT),
        "HOME": SCRATCH_DIR,
        "XDG_CACHE_HOME": f"{SCRATCH_DIR}/.cache",
        **OFFLINE_ENV,  # last: config cannot turn telemetry back on
    }
    return [{"name": k, "value": v} for k, v in sorted(env.items())]


def allowed_endpoints(spec: InferenceStackSpec) -> str:
    """The residency policy's object stores, which the warmer refuses to leave."""
    return ",".join(spec.residency.allowed_object_store_endpoints)


def ensure_args(spec: InferenceStackSpec, model: ModelSpec) -> list[str]:
    """The warmer's ``ensure``: returns at once when the verified copy is on the node."""
    return [
        "ensure",
        "--endpoint",
        model.source.endpoint,
        "--uri",
        model.source.uri,
        "--revision",
        model.source.revision,
        "--cache",
        spec.cache_mount_point,
        "--model",
        model.name,
        "--allowed-endpoints",
        allowed_endpoints(spec),
    ]


def model_affinity(spec: InferenceStackSpec, model: ModelSpec) -> Obj:
    expressions = [residency_expression(spec), gpu_node_expression(model.gpus_per_replica)]
    fitting = fitting_gpu_models(model)
    if model.gpu is not None or set(fitting) != set(GPU_MODELS):
        expressions.append({"key": GPU_MODEL_LABEL, "operator": "In", "values": fitting})
    return required_node_affinity(*expressions)


def model_deployment(spec: InferenceStackSpec, model: ModelSpec) -> Obj:
    labels = model_labels(model)
    gpus = str(model.gpus_per_replica)
    probe_port = {"port": "http", "path": "/health"}
    startup_failures = math.ceil(startup_budget_seconds(model) / STARTUP_PROBE_PERIOD_SECONDS)
    server = {
        "name": "server",
        "image": model.image or spec.inference.image,
        "args": server_args(spec, model),
        "env": server_env(spec, model),
        "ports": [{"name": "http", "containerPort": MODEL_PORT, "protocol": "TCP"}],
        "resources": {"requests": {GPU_RESOURCE: gpus}, "limits": {GPU_RESOURCE: gpus}},
        "startupProbe": {
            "httpGet": probe_port,
            "periodSeconds": STARTUP_PROBE_PERIOD_SECONDS,
            "failureThreshold": startup_failures,
            "timeoutSeconds": 5,
        },
        "readinessProbe": {
            "httpGet": probe_port,
            "periodSeconds": 5,
            "failureThreshold": 3,
            "timeoutSeconds": 5,
        },
        "livenessProbe": {
            "httpGet": probe_port,
            "periodSeconds": 15,
            "failureThreshold": 4,
            "timeoutSeconds": 10,
        },
        "securityContext": restricted_container(SERVER_UID),
        "volumeMounts": [
            {"name": CACHE_VOLUME, "mountPath": spec.cache_mount_point, "readOnly": True},
            {"name": "shm", "mountPath": "/dev/shm"},  # noqa: S108 - a memory emptyDir
            {"name": "scratch", "mountPath": SCRATCH_DIR},
        ],
    }
    ensure = {
        **weights_container(spec, "weights", ensure_args(spec, model)),
        "volumeMounts": [{"name": CACHE_VOLUME, "mountPath": spec.cache_mount_point}],
    }
    if model.image is None:
        server["command"] = list(VLLM_COMMAND)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(model.name, MODELS_NAMESPACE, "model-server", **labels),
        "spec": {
            # KEDA owns the replica count from here on (0 while idle); the wiring ignores changes
            "replicas": 0,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": labels},
            # a new replica needs free GPUs: never surge past what KEDA asked for
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
            },
            "template": {
                "metadata": {"labels": {**labels, "app.kubernetes.io/component": "model-server"}},
                "spec": {
                    "runtimeClassName": RUNTIME_CLASS,
                    "affinity": model_affinity(spec, model),
                    "tolerations": GPU_TOLERATIONS,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": restricted_pod(SERVER_UID),
                    "terminationGracePeriodSeconds": 60,
                    "initContainers": [ensure],
                    "containers": [server],
                    "volumes": [
                        {
                            "name": CACHE_VOLUME,
                            "hostPath": {"path": spec.cache_mount_point, "type": "Directory"},
                        },
                        # NCCL and vLLM's workers share tensors through /dev/shm
                        {"name": "shm", "emptyDir": {"medium": "Memory"}},
                        {"name": "scratch", "emptyDir": {}},
                    ],
                },
            },
        },
    }


def model_service(model: ModelSpec) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(model.name, MODELS_NAMESPACE, "model-server", **model_labels(model)),
        "spec": {
            "type": "ClusterIP",
            "selector": model_labels(model),
            "ports": [
                {"name": "http", "port": MODEL_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def model_upstream(model: ModelSpec) -> str:
    """The base URL the gateway forwards ``model``'s requests to."""
    return f"http://{service_host(model.name, MODELS_NAMESPACE)}:{MODEL_PORT}"


def scaler_address() -> str:
    """The gateway's external-push scaler, as KEDA dials it."""
    return f"{service_host(GATEWAY, GATEWAY_NAMESPACE)}:{SCALER_GRPC_PORT}"


def scaled_object(model: ModelSpec) -> Obj:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": metadata(model.name, MODELS_NAMESPACE, "autoscaling", **model_labels(model)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": model.name},
            "minReplicaCount": 0,
            "maxReplicaCount": model.max_replicas,
            "cooldownPeriod": model.idle_seconds,
            "pollingInterval": 15,
            "triggers": [
                {
                    "type": "external-push",
                    "metadata": {"scalerAddress": scaler_address(), "model": model.served},
                }
            ],
        },
    }
