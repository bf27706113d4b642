"""Per model: the serving Deployment (replicas owned by KEDA), its Service and its ScaledObject."""

from __future__ import annotations

import json
import math
from pathlib import PurePosixPath
from typing import Final

from sovereign_gateway.ports import SCALER_GRPC_PORT
from sovereign_gateway.trigger import METADATA_MODEL_KEY
from sovereign_weights.layout import CachePaths
from sovereign_weights.units import GIB, MIB

from components.config.catalog import GPU_MODELS
from components.config.models import ModelSpec
from components.plan.engine_args import planned_engine_args
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
    replicas_service_name,
    service_host,
)
from components.plan.sizing import (
    SHM_BYTES,
    STREAMER_MEMORY_LIMIT_BYTES,
    ReplicaHostMemory,
    replica_cpus,
    replica_host_memory,
)

# How often KEDA asks the scaler for a model's metric; "active" is pushed at once instead.
KEDA_POLLING_INTERVAL_SECONDS: Final = 15
# Sizing of the startup probe. The weights cannot be larger than the GPU memory a replica asks for,
# so that bounds what must be read; they are read at the cache's floor speed
# (``cache.minReadMibPerSecond``, which verification measures on every host), and the streaming
# loader reads at close to disk speed. Engine start (CUDA context, NCCL for tensor parallelism,
# CUDA graph capture, compilation on a cold compile cache) gets a fixed allowance on top.
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
# uid 1000 has no /etc/passwd entry in the vllm-openai image, and torch inductor's default cache
# directory is named after getpass.getuser(), which reads LOGNAME, USER, LNAME, USERNAME and
# only then the passwd file (KeyError there). The name is given through the environment.
SERVER_USER: Final = "model-server"
CACHE_VOLUME: Final = "weights-cache"
# The revision's compile caches on the node (CachePaths.compile_dir), read-write for the server:
# a warm start loads compiled graphs and kernels instead of compiling them again.
COMPILE_CACHE_DIR: Final = "/var/cache/sovereign-compile"
# Where PyTorch, Triton and vLLM look for their caches (torch/_inductor/runtime/cache_dir_utils.py,
# triton/knobs.py, vllm/envs.py at the versions the vllm-openai v0.11 image ships).
COMPILE_CACHE_ENV: Final = {
    "TORCHINDUCTOR_CACHE_DIR": f"{COMPILE_CACHE_DIR}/torchinductor",
    "TRITON_CACHE_DIR": f"{COMPILE_CACHE_DIR}/triton",
    "VLLM_CACHE_ROOT": f"{COMPILE_CACHE_DIR}/vllm",
}


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


def cache_read_bytes_per_second(spec: InferenceStackSpec) -> int:
    """The cache's floor read speed: what verification holds every node's cache to."""
    return spec.cache_min_read_mib_per_second * MIB


def weights_read_seconds(spec: InferenceStackSpec, weight_bytes: int) -> int:
    """Reading ``weight_bytes`` from the node cache into GPU memory, at the cache's floor speed.

    ``weight_bytes`` is the checkpoint's size. vLLM's tensor-parallel workers each stream every
    file (see :mod:`components.plan.sizing`), but through the page cache (the Run:ai streamer
    opens files without ``O_DIRECT`` unless told to), so the drives serve each byte about once."""
    return math.ceil(weight_bytes / cache_read_bytes_per_second(spec))


def startup_budget_seconds(spec: InferenceStackSpec, model: ModelSpec) -> int:
    """How long a replica may take from container start to a healthy server.

    The image pull and the weights fetch happen before the container starts (the warmer pre-pulls
    one and prefetches the other), so the probe waits for the read and the engine start alone.
    The engine allowance still covers a cold compile cache: the first start of a revision with a
    new image on a node compiles, every later one loads what it compiled."""
    return weights_read_seconds(spec, weight_bytes_bound(model)) + ENGINE_START_ALLOWANCE_SECONDS


def model_labels(model: ModelSpec) -> dict[str, str]:
    return {MODEL_LABEL: model.name}


def server_args(spec: InferenceStackSpec, model: ModelSpec) -> list[str]:
    """vLLM's arguments from config and the sizing's engine limits; a bring-your-own image gets
    ``args`` alone (its server's flags are its own)."""
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
        # memory_limit bounds each worker's CPU buffer (see components.plan.sizing)
        json.dumps(
            {"concurrency": STREAMER_CONCURRENCY, "memory_limit": STREAMER_MEMORY_LIMIT_BYTES}
        ),
    ]
    if model.max_model_len is not None:
        args += ["--max-model-len", str(model.max_model_len)]
    # the engine limits the sizing assumed (vLLM's memory profile then runs that batch); the
    # model's own args come last and, where they set a limit, the plan does not repeat it
    return args + planned_engine_args(model) + list(model.args)


def server_image(spec: InferenceStackSpec, model: ModelSpec) -> str:
    return model.image or spec.inference.image


def image_digest(image: str) -> str:
    """``sha256:<hex>`` of a pinned reference (config refuses any other)."""
    return image.rpartition("@")[2]


def compile_cache_dir(spec: InferenceStackSpec, model: ModelSpec) -> str:
    """The node directory of ``model``'s compile caches for the image it runs."""
    digest = image_digest(server_image(spec, model))
    return str(cache_paths(spec, model).compile_dir(digest))


def compile_cache_subpath(spec: InferenceStackSpec, model: ModelSpec) -> str:
    """``compile_cache_dir`` relative to the node cache (the volume's root)."""
    return str(PurePosixPath(compile_cache_dir(spec, model)).relative_to(spec.cache_mount_point))


def server_env(spec: InferenceStackSpec, model: ModelSpec) -> list[Obj]:
    env = {
        **model.env,
        # what a bring-your-own server needs to find its weights and listen where probes look
        "SOVEREIGN_MODEL_DIR": str(cache_paths(spec, model).complete_dir),
        "SOVEREIGN_SERVED_NAME": model.served,
        "SOVEREIGN_PORT": str(MODEL_PORT),
        "HOME": SCRATCH_DIR,
        "XDG_CACHE_HOME": f"{SCRATCH_DIR}/.cache",
        "USER": SERVER_USER,
        "LOGNAME": SERVER_USER,
        **COMPILE_CACHE_ENV,
        **OFFLINE_ENV,  # last: config cannot turn telemetry back on
    }
    return [{"name": k, "value": v} for k, v in sorted(env.items())]


def allowed_endpoints(spec: InferenceStackSpec) -> str:
    """The residency policy's object stores, which the warmer refuses to leave."""
    return ",".join(spec.residency.allowed_object_store_endpoints)


def cache_filesystem_args(spec: InferenceStackSpec) -> list[str]:
    """The weights tool's refusal of an unmarked cache, where the toolkit's cache step marks it."""
    return ["--require-cache-filesystem"] if spec.cache_filesystem_marked else []


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
        "--compile-image",
        image_digest(server_image(spec, model)),
        "--compile-owner",
        str(SERVER_UID),
        *cache_filesystem_args(spec),
    ]


def model_affinity(spec: InferenceStackSpec, model: ModelSpec) -> Obj:
    expressions = [residency_expression(spec), gpu_node_expression(model.gpus_per_replica)]
    fitting = fitting_gpu_models(model)
    if model.gpu is not None or set(fitting) != set(GPU_MODELS):
        expressions.append({"key": GPU_MODEL_LABEL, "operator": "In", "values": fitting})
    return required_node_affinity(*expressions)


def memory_quantity(count: int) -> str:
    """A Kubernetes quantity for ``count`` bytes, in whole MiB (rounded up)."""
    return f"{math.ceil(count / MIB)}Mi"


def model_host_memory(model: ModelSpec) -> ReplicaHostMemory:
    """Host memory one replica of ``model`` requests: sized from the upper bound of its weights,
    since the plan sees no manifest (``sovereign size`` reports the same figure)."""
    return replica_host_memory(model.gpus_per_replica, weight_bytes_bound(model))


def server_resources(model: ModelSpec) -> Obj:
    """GPUs, CPUs and host memory of the serving container: requested, so the pod is never
    BestEffort and the scheduler places it where the memory is. No memory limit: the process
    allowances are estimates not yet measured on a GPU, and an OOM kill at CUDA graph capture
    would fail every cold start; under node pressure the kubelet evicts pods above their request
    first. No CPU limit: a throttled scheduling loop stalls every stream of the replica."""
    gpus = str(model.gpus_per_replica)
    memory = memory_quantity(model_host_memory(model).total_bytes)
    return {
        "requests": {
            "cpu": str(replica_cpus(model.gpus_per_replica)),
            "memory": memory,
            GPU_RESOURCE: gpus,
        },
        "limits": {GPU_RESOURCE: gpus},
    }


# Stopping a replica without cutting its streams. vLLM v0.11.0 does not drain on SIGTERM: its
# handler cancels the HTTP server and shuts the engine down before awaiting the server's shutdown
# (vllm/entrypoints/launcher.py, openai/api_server.py), so every request still running is cut.
# The replica therefore waits in preStop, still serving, until the Services have dropped it and
# its running and waiting requests are done, and only then gets SIGTERM.
# - ENDPOINT_REMOVAL_SECONDS: the EndpointSlice update and kube-proxy's rule sync after the pod is
#   marked terminating; requests sent before it lands still reach the replica and are served.
# - the drain waits at most the gateway's request timeout: no request runs longer.
# - SHUTDOWN_MARGIN_SECONDS: vLLM's engine and workers exiting and releasing GPU memory.
ENDPOINT_REMOVAL_SECONDS: Final = 10
SHUTDOWN_MARGIN_SECONDS: Final = 30
DRAIN_POLL_SECONDS: Final = 2
# vLLM's scheduler gauges (vllm/v1/metrics/loggers.py at v0.11.0), one sample per engine.
VLLM_BUSY_GAUGES: Final = ("vllm:num_requests_running", "vllm:num_requests_waiting")
# Run in the server container by the preStop hook: ``python3 -c DRAIN_SCRIPT port removal
# deadline poll gauge...``. It exits when the server is idle, gone, or the deadline has passed.
DRAIN_SCRIPT: Final = """\
import sys, time, urllib.request
port, removal, deadline, poll = (int(a) for a in sys.argv[1:5])
gauges = tuple(sys.argv[5:])
end = time.monotonic() + deadline
time.sleep(removal)
while time.monotonic() < end:
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        text = urllib.request.urlopen(url, timeout=poll).read().decode()
    except OSError:
        break
    busy = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(gauges)
    )
    if busy == 0:
        break
    time.sleep(poll)
"""
# The HPA refuses a scale-down period above 1800 s and a stabilization window above 3600 s
# (MaxPeriodSeconds, MaxStabilizationWindowSeconds in pkg/apis/autoscaling/validation).
HPA_MAX_PERIOD_SECONDS: Final = 1800
HPA_MAX_STABILIZATION_SECONDS: Final = 3600


def drain_deadline_seconds(spec: InferenceStackSpec) -> int:
    """The longest a stopping replica (a model server or a gateway) waits for its requests: no
    forwarded request runs longer than the gateway's request timeout."""
    return spec.inference.gateway.request_timeout_seconds


def termination_grace_seconds(spec: InferenceStackSpec) -> int:
    """From the pod's deletion to SIGKILL: endpoint removal, the drain, and the engine's exit."""
    return ENDPOINT_REMOVAL_SECONDS + drain_deadline_seconds(spec) + SHUTDOWN_MARGIN_SECONDS


# pulumi-kubernetes waits this long for a Deployment's rollout (its default is 10 minutes).
PULUMI_TIMEOUT_ANNOTATION: Final = "pulumi.com/timeoutSeconds"
# Scheduling, the pod sandbox and the init container that finds the weights on the node.
ROLLOUT_START_MARGIN_SECONDS: Final = 120


def rollout_timeout_seconds(spec: InferenceStackSpec, model: ModelSpec) -> int:
    """How long ``pulumi up`` waits for a model's rollout: with ``maxSurge: 0`` an old replica
    releases its GPUs (its whole grace period) before the new one starts and becomes healthy."""
    return (
        termination_grace_seconds(spec)
        + ROLLOUT_START_MARGIN_SECONDS
        + startup_budget_seconds(spec, model)
    )


def server_lifecycle(spec: InferenceStackSpec, model: ModelSpec) -> Obj:
    """The preStop hook: the toolkit's vLLM drains (see DRAIN_SCRIPT); a bring-your-own server
    only waits for its endpoint's removal, and must finish its requests on SIGTERM itself."""
    if model.image is not None:
        return {"preStop": {"sleep": {"seconds": ENDPOINT_REMOVAL_SECONDS}}}
    drain = [
        "python3",
        "-c",
        DRAIN_SCRIPT,
        str(MODEL_PORT),
        str(ENDPOINT_REMOVAL_SECONDS),
        str(ENDPOINT_REMOVAL_SECONDS + drain_deadline_seconds(spec)),
        str(DRAIN_POLL_SECONDS),
        *VLLM_BUSY_GAUGES,
    ]
    return {"preStop": {"exec": {"command": drain}}}


def scale_down_behavior(spec: InferenceStackSpec, model: ModelSpec) -> Obj:
    """Between 1 and maxReplicas (KEDA itself takes the last replica away after cooldownPeriod):
    a replica goes only after the load has stayed lower for ``idleSeconds``, one at a time, and
    the next one only once the previous has had its whole grace period to drain."""
    return {
        "stabilizationWindowSeconds": min(model.idle_seconds, HPA_MAX_STABILIZATION_SECONDS),
        "selectPolicy": "Min",
        "policies": [
            {
                "type": "Pods",
                "value": 1,
                "periodSeconds": min(termination_grace_seconds(spec), HPA_MAX_PERIOD_SECONDS),
            }
        ],
    }


def model_deployment(spec: InferenceStackSpec, model: ModelSpec) -> Obj:
    labels = model_labels(model)
    probe_port = {"port": "http", "path": "/health"}
    startup_failures = math.ceil(startup_budget_seconds(spec, model) / STARTUP_PROBE_PERIOD_SECONDS)
    server = {
        "name": "server",
        "image": server_image(spec, model),
        "args": server_args(spec, model),
        "env": server_env(spec, model),
        "ports": [{"name": "http", "containerPort": MODEL_PORT, "protocol": "TCP"}],
        "resources": server_resources(model),
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
        "lifecycle": server_lifecycle(spec, model),
        "securityContext": restricted_container(SERVER_UID),
        "volumeMounts": [
            {"name": CACHE_VOLUME, "mountPath": spec.cache_mount_point, "readOnly": True},
            {"name": "shm", "mountPath": "/dev/shm"},  # noqa: S108 - a memory emptyDir
            {"name": "scratch", "mountPath": SCRATCH_DIR},
            # the node cache's compile directory for this revision and image, read-write: a
            # subPath is resolved when the server starts, after the init container (which refuses
            # an unmarked cache) made it and handed it over; nothing lands on a bare mount point
            {
                "name": CACHE_VOLUME,
                "mountPath": COMPILE_CACHE_DIR,
                "subPath": compile_cache_subpath(spec, model),
            },
        ],
    }
    ensure = {
        **weights_container(spec, "weights", ensure_args(spec, model)),
        "volumeMounts": [{"name": CACHE_VOLUME, "mountPath": spec.cache_mount_point}],
    }
    # the compile cache directory is handed to the server's user, which needs CAP_CHOWN
    ensure["securityContext"]["capabilities"] = {"drop": ["ALL"], "add": ["CHOWN"]}
    if model.image is None:
        server["command"] = list(VLLM_COMMAND)
    meta = metadata(model.name, MODELS_NAMESPACE, "model-server", **labels)
    meta["annotations"] = {PULUMI_TIMEOUT_ANNOTATION: str(rollout_timeout_seconds(spec, model))}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
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
                    "terminationGracePeriodSeconds": termination_grace_seconds(spec),
                    "initContainers": [ensure],
                    "containers": [server],
                    "volumes": [
                        {
                            "name": CACHE_VOLUME,
                            "hostPath": {"path": spec.cache_mount_point, "type": "Directory"},
                        },
                        # NCCL and vLLM's workers share tensors through /dev/shm
                        {
                            "name": "shm",
                            "emptyDir": {
                                "medium": "Memory",
                                "sizeLimit": memory_quantity(SHM_BYTES),
                            },
                        },
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


def model_replicas_service(model: ModelSpec) -> Obj:
    """Headless: its DNS name resolves to each ready replica, which the gateway probes and meters
    one by one. Not-ready replicas stay out (``publishNotReadyAddresses`` false)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(
            replicas_service_name(model.name),
            MODELS_NAMESPACE,
            "model-server",
            **model_labels(model),
        ),
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "None",
            "publishNotReadyAddresses": False,
            "selector": model_labels(model),
            "ports": [
                {"name": "http", "port": MODEL_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def model_upstream(model: ModelSpec) -> str:
    """The base URL the gateway forwards ``model``'s requests to."""
    return f"http://{service_host(model.name, MODELS_NAMESPACE)}:{MODEL_PORT}"


def model_replicas_address(model: ModelSpec) -> str:
    """``host:port`` whose DNS records are ``model``'s ready replicas (its headless Service): the
    gateway probes and meters each replica there, while requests go through ``model_upstream``."""
    host = service_host(replicas_service_name(model.name), MODELS_NAMESPACE)
    return f"{host}:{MODEL_PORT}"


def scaler_address() -> str:
    """The gateway's external-push scaler, as KEDA dials it."""
    return f"{service_host(GATEWAY, GATEWAY_NAMESPACE)}:{SCALER_GRPC_PORT}"


SCALER_TRIGGER_AUTH: Final = "sovereign-gateway-scaler"
"""The TriggerAuthentication through which KEDA presents its client certificate to the scaler."""


def scaler_trigger_authentication(client_secret: str, keys: tuple[str, str, str]) -> Obj:
    """KEDA's mutual TLS towards the gateway's scaler: ``caCert``, ``tlsClientCert`` and
    ``tlsClientKey``, the auth parameters KEDA 2.16's external scaler reads, from the Secret
    ``client_secret`` (``keys``: its CA, certificate and key entries)."""
    ca, cert, key = keys
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": metadata(SCALER_TRIGGER_AUTH, MODELS_NAMESPACE, "autoscaling"),
        "spec": {
            "secretTargetRef": [
                {"parameter": "caCert", "name": client_secret, "key": ca},
                {"parameter": "tlsClientCert", "name": client_secret, "key": cert},
                {"parameter": "tlsClientKey", "name": client_secret, "key": key},
            ]
        },
    }


def scaled_object(spec: InferenceStackSpec, model: ModelSpec) -> Obj:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": metadata(model.name, MODELS_NAMESPACE, "autoscaling", **model_labels(model)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": model.name},
            "minReplicaCount": 0,
            "maxReplicaCount": model.max_replicas,
            "cooldownPeriod": model.idle_seconds,
            "pollingInterval": KEDA_POLLING_INTERVAL_SECONDS,
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {"scaleDown": scale_down_behavior(spec, model)}
                }
            },
            "triggers": [
                {
                    "type": "external-push",
                    "metadata": {
                        "scalerAddress": scaler_address(),
                        METADATA_MODEL_KEY: model.served,
                    },
                    "authenticationRef": {"name": SCALER_TRIGGER_AUTH},
                }
            ],
        },
    }
