"""How long a request to a scaled-to-zero model waits before its replica answers (pure).

One home for the arithmetic: the gateway's route table (``expectedColdStartSeconds``, which the
gateway tells a held client as ``Retry-After``) and ``sovereign size`` both read
:func:`estimate_cold_start`, and the startup probe's budget
(:func:`components.plan.kubernetes.serving.startup_budget_seconds`) reads the weights at the same
floor speed.

The steps, on a node that already holds what the plan puts there before any request:

- **pod start**: scheduling, the pod sandbox, and the init container's ``ensure``, which returns at
  once on a verified copy (:data:`POD_START_SECONDS`);
- **image pull**: none when the weights warmer pre-pulls the model's serving image on the node
  (its DaemonSet runs on every GPU node and pulls every model's image,
  :func:`components.plan.kubernetes.warmer.serving_images`); otherwise not estimated, since the
  plan does not know the image's size;
- **weights**: the checkpoint read from the node cache at the speed verification holds every
  host's cache to (``cache.minReadMibPerSecond``): the manifest's tensor bytes when the caller has
  them, else the GPU memory of one replica, which bounds them;
- **engine start** on a warm compile cache: vLLM's process, the CUDA context, the compiled graphs
  loaded and CUDA graphs captured (:data:`WARM_ENGINE_START_SECONDS`).

Not in the total, and said so by :meth:`ColdStart.line`: the first start of a revision and image
on a node compiles (up to the probe's engine allowance), and a model with ``prefetch: false``
fetches its weights from the object store on its first start on a node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from pydantic import JsonValue
from sovereign_weights.units import GIB

from components.config.models import ModelSpec, StackConfig
from components.plan.kubernetes.serving import (
    ENGINE_START_ALLOWANCE_SECONDS,
    server_image,
    weight_bytes_bound,
    weights_read_seconds,
)
from components.plan.kubernetes.spec import InferenceStackSpec
from components.plan.kubernetes.warmer import serving_images

# Estimates, not yet measured on a GPU: the scheduler, the sandbox and an init container that
# finds the verified copy; vLLM v0.11's start on a warm compile cache.
POD_START_SECONDS: Final = 5
WARM_ENGINE_START_SECONDS: Final = 60

WeightBytesSource = Literal["manifest", "gpu-memory-bound"]


@dataclass(frozen=True)
class ColdStart:
    """One model's cold start, step by step, in whole seconds."""

    pod_start_seconds: int
    # None: the image is not pre-pulled on the node and its size is unknown to the plan
    image_pull_seconds: int | None
    weight_bytes: int
    weight_bytes_source: WeightBytesSource
    cache_read_mib_per_second: int
    weights_read_seconds: int
    engine_start_seconds: int
    weights_prefetched: bool
    compile_allowance_seconds: int

    @property
    def total_seconds(self) -> int:
        """The typical wait; an image pull the plan cannot size is left out (see ``line``)."""
        return (
            self.pod_start_seconds
            + (self.image_pull_seconds or 0)
            + self.weights_read_seconds
            + self.engine_start_seconds
        )

    def as_dict(self) -> dict[str, JsonValue]:
        """The ``coldStart`` entry of ``sovereign size --json``."""
        return {
            "totalSeconds": self.total_seconds,
            "podStartSeconds": self.pod_start_seconds,
            "imagePullSeconds": self.image_pull_seconds,
            "weightBytes": self.weight_bytes,
            "weightBytesSource": self.weight_bytes_source,
            "cacheReadMibPerSecond": self.cache_read_mib_per_second,
            "weightsReadSeconds": self.weights_read_seconds,
            "engineStartSeconds": self.engine_start_seconds,
            "weightsPrefetched": self.weights_prefetched,
            "firstStartCompileSeconds": self.compile_allowance_seconds,
        }

    def line(self, model_name: str) -> str:
        """One line of ``sovereign size``: the total, then each step."""
        image = (
            "image pre-pulled"
            if self.image_pull_seconds == 0
            else "image pull not estimated (size unknown)"
            if self.image_pull_seconds is None
            else f"image pull {self.image_pull_seconds} s"
        )
        bound = "" if self.weight_bytes_source == "manifest" else " at most (no manifest)"
        text = (
            f"{model_name}: cold start about {self.total_seconds} s = pod start "
            f"{self.pod_start_seconds} s, {image}, weights {self.weight_bytes / GIB:.1f} GiB"
            f"{bound} in {self.weights_read_seconds} s at {self.cache_read_mib_per_second} MiB/s,"
            f" engine start {self.engine_start_seconds} s"
        )
        notes = [f"first start on a node compiles, up to {self.compile_allowance_seconds} s more"]
        if not self.weights_prefetched:
            notes.append("prefetch is off: the first start on a node also fetches the weights")
        return f"{text} ({'; '.join(notes)})"


def estimate_cold_start(
    config: StackConfig | InferenceStackSpec, model: ModelSpec, weight_bytes: int | None
) -> ColdStart:
    """``model``'s cold start on a node of ``config``'s cluster.

    ``weight_bytes`` is the checkpoint's size (``ModelFacts.tensor_bytes`` of its manifest); None
    when no manifest is at hand, and then the GPU memory one replica is given bounds it."""
    spec = (
        config if isinstance(config, InferenceStackSpec) else InferenceStackSpec.from_stack(config)
    )
    if weight_bytes is not None and weight_bytes < 0:
        raise ValueError(f"weight_bytes {weight_bytes}: expected a size in bytes, 0 or more")
    source: WeightBytesSource = "manifest" if weight_bytes is not None else "gpu-memory-bound"
    read = weight_bytes if weight_bytes is not None else weight_bytes_bound(model)
    return ColdStart(
        pod_start_seconds=POD_START_SECONDS,
        image_pull_seconds=0 if server_image(spec, model) in serving_images(spec) else None,
        weight_bytes=read,
        weight_bytes_source=source,
        cache_read_mib_per_second=spec.cache_min_read_mib_per_second,
        weights_read_seconds=weights_read_seconds(spec, read),
        engine_start_seconds=WARM_ENGINE_START_SECONDS,
        weights_prefetched=model.prefetch,
        compile_allowance_seconds=ENGINE_START_ALLOWANCE_SECONDS,
    )


def cold_start_estimate_seconds(spec: InferenceStackSpec, model: ModelSpec) -> int:
    """What the gateway's route table promises a held request (``expectedColdStartSeconds``):
    the plan sees no manifest, so the weights are taken at their bound."""
    return estimate_cold_start(spec, model, None).total_seconds
