"""The weights warmer: a DaemonSet on GPU nodes that keeps every ``prefetch`` model on the node
and every model's serving image in the node's image store (pulled before any request waits)."""

from __future__ import annotations

from typing import Final

from sovereign_weights.prefetch import PrefetchEntry, render_models_file

from components.plan.kubernetes.objects import (
    GPU_TOLERATIONS,
    Obj,
    gpu_node_expression,
    metadata,
    required_node_affinity,
    residency_expression,
    restricted_container,
    restricted_pod,
)
from components.plan.kubernetes.serving import (
    WEIGHTS_COMMAND,
    allowed_endpoints,
    cache_filesystem_args,
    server_image,
    weights_container,
)
from components.plan.kubernetes.spec import (
    COMPONENT_LABEL,
    WARMER,
    WARMER_MODELS,
    WARMER_MODELS_FILE,
    WEIGHTS_NAMESPACE,
    InferenceStackSpec,
)

MODELS_DIR: Final = "/etc/sovereign-weights"
# How often the warmer looks again for models that are missing or were removed by hand.
WATCH_SECONDS: Final = 300
WARMER_LABELS: Final = {COMPONENT_LABEL: "weights-warmer"}
# The pre-pull containers run a static exit-0 program from here (``sovereign-weights
# noop-program``): a serving image may have no shell, nor any program of its own that exits 0.
PREPULL_VOLUME: Final = "prepull"
# top level: /var/run is a link to /run in many images, and a scratch image has neither
PREPULL_DIR: Final = "/sovereign-prepull"
NOOP_PROGRAM: Final = f"{PREPULL_DIR}/noop"
PREPULL_RESOURCES: Final = {
    "requests": {"cpu": "10m", "memory": "16Mi"},
    "limits": {"memory": "16Mi"},
}


def serving_images(spec: InferenceStackSpec) -> list[str]:
    """Every distinct image a model replica runs, in a stable order."""
    return sorted({server_image(spec, m) for m in spec.inference.models})


def prepull_containers(spec: InferenceStackSpec) -> list[Obj]:
    """Init containers that make the kubelet pull each serving image, then exit 0 at once."""
    mount = {"name": PREPULL_VOLUME, "mountPath": PREPULL_DIR}
    # no store credentials, no root: it only writes into the pod's own emptyDir
    writer = {
        "name": "prepull-program",
        "image": spec.inference.weights_image,
        "command": list(WEIGHTS_COMMAND),
        "args": ["noop-program", "--out", NOOP_PROGRAM],
        "resources": PREPULL_RESOURCES,
        "securityContext": restricted_container(),
        "volumeMounts": [mount],
    }
    pulls = [
        {
            "name": f"prepull-{i}",
            "image": image,
            "command": [NOOP_PROGRAM],
            "resources": PREPULL_RESOURCES,
            "securityContext": restricted_container(),
            "volumeMounts": [{**mount, "readOnly": True}],
        }
        for i, image in enumerate(serving_images(spec))
    ]
    return [writer, *pulls]


def prefetch_list(spec: InferenceStackSpec) -> list[PrefetchEntry]:
    """The warmer's ``--models-file``: every model marked ``prefetch``."""
    return [
        PrefetchEntry(
            model=m.name,
            endpoint=m.source.endpoint,
            uri=m.source.uri,
            revision=m.source.revision,
        )
        for m in spec.inference.models
        if m.prefetch
    ]


def warmer_config_map(spec: InferenceStackSpec) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(WARMER_MODELS, WEIGHTS_NAMESPACE, "weights-warmer"),
        "data": {WARMER_MODELS_FILE: render_models_file(prefetch_list(spec))},
    }


def warmer_daemon_set(spec: InferenceStackSpec) -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": metadata(WARMER, WEIGHTS_NAMESPACE, "weights-warmer"),
        "spec": {
            "selector": {"matchLabels": WARMER_LABELS},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": WARMER_LABELS},
                "spec": {
                    "affinity": required_node_affinity(
                        residency_expression(spec), gpu_node_expression()
                    ),
                    "tolerations": GPU_TOLERATIONS,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": restricted_pod(),
                    "initContainers": prepull_containers(spec),
                    "containers": [
                        {
                            **weights_container(
                                spec,
                                "warmer",
                                [
                                    "prefetch",
                                    "--models-file",
                                    f"{MODELS_DIR}/{WARMER_MODELS_FILE}",
                                    "--cache",
                                    spec.cache_mount_point,
                                    "--watch",
                                    str(WATCH_SECONDS),
                                    "--allowed-endpoints",
                                    allowed_endpoints(spec),
                                    *cache_filesystem_args(spec),
                                ],
                                resources={
                                    "requests": {"cpu": "500m", "memory": "512Mi"},
                                    "limits": {"memory": "2Gi"},
                                },
                            ),
                            "volumeMounts": [
                                {"name": "cache", "mountPath": spec.cache_mount_point},
                                {"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "cache",
                            "hostPath": {"path": spec.cache_mount_point, "type": "Directory"},
                        },
                        {"name": "models", "configMap": {"name": WARMER_MODELS}},
                        {"name": PREPULL_VOLUME, "emptyDir": {"sizeLimit": "1Mi"}},
                    ],
                },
            },
        },
    }
