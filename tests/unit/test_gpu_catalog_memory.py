"""The catalog's usable GPU memory: what CUDA hands out, not the marketing size."""

from __future__ import annotations

import pytest
from sovereign_weights.units import GIB

from components.config.catalog import GPU_MODELS, GpuModel


@pytest.mark.parametrize("gpu", GPU_MODELS.values(), ids=list(GPU_MODELS))
def test_usable_memory_is_below_the_marketing_size_and_above_nine_tenths_of_it(
    gpu: GpuModel,
) -> None:
    marketing = gpu.memory_gib * GIB
    assert 0.9 * marketing < gpu.usable_bytes < marketing, (
        f"{gpu.name}: usable_bytes {gpu.usable_bytes / GIB:.2f} GiB, expected between 90% and"
        f" 100% of {gpu.memory_gib} GiB"
    )


@pytest.mark.parametrize("gpu", GPU_MODELS.values(), ids=list(GPU_MODELS))
def test_usable_memory_names_its_source(gpu: GpuModel) -> None:
    source = gpu.usable_source.strip()
    assert source, f"{gpu.name}: usable_source is empty"
    # A figure is either quoted from a named issue or log, or marked as derived from one.
    assert "#" in source, f"{gpu.name}: usable_source names no issue or pull request: {source!r}"
