"""The cold-start estimate: one arithmetic for the gateway's route table and ``sovereign size``,
weights read at the cache speed verification holds hosts to, image pulls only where the warmer
has not pre-pulled."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from sovereign_weights.units import GIB

from components.config import load_stack_file
from components.config.models import StackConfig
from components.plan.cold_start import (
    POD_START_SECONDS,
    WARM_ENGINE_START_SECONDS,
    cold_start_estimate_seconds,
    estimate_cold_start,
)
from components.plan.kubernetes import InferenceStackSpec, inference_plan
from components.plan.kubernetes.gateway import route_table
from components.plan.kubernetes.serving import (
    ENGINE_START_ALLOWANCE_SECONDS,
    STARTUP_PROBE_PERIOD_SECONDS,
    startup_budget_seconds,
    weight_bytes_bound,
)
from components.plan.kubernetes.warmer import serving_images
from tests.unit.test_config import NS, problems_for
from tests.unit.test_inference_objects import stack_variant

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prod() -> StackConfig:
    return load_stack_file(ROOT / "stacks" / "Pulumi.prod-fra.yaml")


def with_read_floor(mib_per_second: int) -> Any:
    def edit(config: dict[str, Any]) -> None:
        config.setdefault(NS + "cache", {})["minReadMibPerSecond"] = mib_per_second

    return edit


def test_the_route_table_promises_what_sovereign_size_prints(prod: StackConfig) -> None:
    spec = InferenceStackSpec.from_stack(prod)
    routes = {r.name: r for r in route_table(spec).models}
    for model in prod.inference.models:
        estimate = estimate_cold_start(prod, model, None)
        assert routes[model.served].expected_cold_start_seconds == estimate.total_seconds
        assert cold_start_estimate_seconds(spec, model) == estimate.total_seconds
        assert f"{model.name}: cold start about {estimate.total_seconds} s" in estimate.line(
            model.name
        )


def test_the_estimate_is_pod_start_read_and_warm_engine_start(prod: StackConfig) -> None:
    llama = next(m for m in prod.inference.models if m.name == "llama-70b")
    estimate = estimate_cold_start(prod, llama, None)
    # no manifest: the weights are bounded by minGpuMemoryGib (160), read at 1024 MiB/s
    assert (estimate.weight_bytes, estimate.weight_bytes_source) == (160 * GIB, "gpu-memory-bound")
    assert estimate.weights_read_seconds == 160
    assert estimate.image_pull_seconds == 0
    assert estimate.total_seconds == POD_START_SECONDS + 160 + WARM_ENGINE_START_SECONDS == 225


def test_the_manifest_s_bytes_replace_the_gpu_memory_bound(prod: StackConfig) -> None:
    llama = next(m for m in prod.inference.models if m.name == "llama-70b")
    checkpoint = 141 * GIB + 1  # Llama 3.1 70B in bfloat16 holds about 141 GB of tensors
    estimate = estimate_cold_start(prod, llama, checkpoint)
    assert estimate.weight_bytes_source == "manifest"
    assert estimate.weights_read_seconds == 142  # rounded up: never promise less than the read
    assert "at most" not in estimate.line(llama.name)
    assert "at most (no manifest)" in estimate_cold_start(prod, llama, None).line(llama.name)


def test_a_faster_cache_floor_shortens_the_read_and_the_probe_budget(
    prod: StackConfig, tmp_path: Path
) -> None:
    faster = stack_variant(tmp_path, with_read_floor(4096), base="Pulumi.prod-fra.yaml")
    assert faster.cache.min_read_mib_per_second == 4096
    for model in prod.inference.models:
        slow = estimate_cold_start(prod, model, None)
        fast = estimate_cold_start(faster, model, None)
        bound = weight_bytes_bound(model)
        assert slow.weights_read_seconds == math.ceil(bound / (1024 * 1024**2))
        assert fast.weights_read_seconds == math.ceil(bound / (4096 * 1024**2))
        assert fast.cache_read_mib_per_second == 4096
        spec = InferenceStackSpec.from_stack(faster)
        assert startup_budget_seconds(spec, model) == (
            fast.weights_read_seconds + ENGINE_START_ALLOWANCE_SECONDS
        )
    # the startup probe of the rendered Deployment follows the floor too
    plan = inference_plan(InferenceStackSpec.from_stack(faster))
    llama = next(m for m in faster.inference.models if m.name == "llama-70b")
    deployment = next(o.deployment for o in plan.models if o.name == llama.name)
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    assert server["startupProbe"]["failureThreshold"] == math.ceil(
        (40 + ENGINE_START_ALLOWANCE_SECONDS) / STARTUP_PROBE_PERIOD_SECONDS
    )


def test_an_image_the_warmer_pre_pulls_costs_no_pull_and_any_other_is_not_guessed(
    prod: StackConfig,
) -> None:
    spec = InferenceStackSpec.from_stack(prod)
    model = prod.inference.models[0]
    assert spec.inference.image in serving_images(spec)
    assert estimate_cold_start(spec, model, None).image_pull_seconds == 0
    # a model the stack does not serve: the warmer never pulled its image
    stranger = model.model_copy(
        update={"image": spec.inference.image.replace("vllm-openai", "other-server")}
    )
    assert stranger.image not in serving_images(spec)
    estimate = estimate_cold_start(spec, stranger, None)
    assert estimate.image_pull_seconds is None
    assert estimate.total_seconds == (
        POD_START_SECONDS + estimate.weights_read_seconds + WARM_ENGINE_START_SECONDS
    )
    assert "image pull not estimated (size unknown)" in estimate.line(stranger.name)


def test_the_line_names_what_the_total_leaves_out(prod: StackConfig) -> None:
    model = prod.inference.models[0]
    prefetched = estimate_cold_start(prod, model, 10 * GIB).line(model.name)
    assert f"compiles, up to {ENGINE_START_ALLOWANCE_SECONDS} s more" in prefetched
    assert "fetches the weights" not in prefetched
    fetched = estimate_cold_start(prod, model.model_copy(update={"prefetch": False}), 10 * GIB)
    assert not fetched.weights_prefetched
    assert "prefetch is off: the first start on a node also fetches the weights" in fetched.line(
        model.name
    )


def test_as_dict_is_the_json_entry_in_camel_case(prod: StackConfig) -> None:
    model = prod.inference.models[0]
    entry = estimate_cold_start(prod, model, 10 * GIB).as_dict()
    assert json.loads(json.dumps(entry)) == entry
    assert entry["totalSeconds"] == POD_START_SECONDS + 10 + WARM_ENGINE_START_SECONDS
    assert entry["weightBytes"] == 10 * GIB
    assert entry["cacheReadMibPerSecond"] == 1024
    assert entry["imagePullSeconds"] == 0
    assert all("_" not in key for key in entry)


def test_a_negative_checkpoint_size_is_refused(prod: StackConfig) -> None:
    with pytest.raises(ValueError, match="weight_bytes -1: expected a size in bytes"):
        estimate_cold_start(prod, prod.inference.models[0], -1)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [(5, "greater than or equal to 10"), (200_000, "less than or equal to 102400"), ("fast", "")],
)
def test_a_cache_read_floor_out_of_range_is_refused_naming_the_key(
    tmp_path: Path, value: object, fragment: str
) -> None:
    problems = problems_for(tmp_path, with_read_floor(value))  # type: ignore[arg-type]
    assert "cache.minReadMibPerSecond" in problems, problems
    assert fragment in problems["cache.minReadMibPerSecond"]


def test_the_readme_documents_the_cache_read_floor() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    cache_row = next(i for i, line in enumerate(lines) if line.startswith("| `cache` |"))
    # the key's own row continues the cache section of the stack-key table
    row = lines[cache_row + 1]
    assert row.startswith("| | `minReadMibPerSecond` |")
    assert "(1024; 10 to 102400)" in row
