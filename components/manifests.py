"""Each model's sizing facts (its manifest), read from a local directory, the local manifest cache,
or the model's EU object store: the I/O that ``sovereign size``, ``validate`` and the Pulumi program
share before the pure sizing rule in :mod:`components.plan.sizing` judges them."""

from __future__ import annotations

from pathlib import Path

from sovereign_weights.manifest import ModelFacts

from components.config import StackConfig


def default_manifest_cache(project_dir: Path) -> Path:
    """Where manifests read from the store are kept: ``sovereign size`` writes them there,
    ``validate`` and the Pulumi program read them back."""
    return project_dir / ".cache" / "manifests"


def model_facts_for(
    config: StackConfig,
    manifest_cache: Path,
    from_dirs: dict[str, Path] | None = None,
    *,
    fetch: bool = True,
) -> tuple[dict[str, ModelFacts], list[str]]:
    """Sizing facts per model name, and one line per model whose manifest could not be read.

    A model named in ``from_dirs`` is described from that local directory; any other from its
    manifest kept under ``manifest_cache``, else (when ``fetch``) read from the model's endpoint
    (allowed by the residency policy, which the config boundary has checked) and kept there.
    ``validate`` calls this with ``fetch=False``: offline, cached manifests only.
    """
    from sovereign_weights.errors import WeightsError  # noqa: PLC0415
    from sovereign_weights.layout import parse_object_uri  # noqa: PLC0415
    from sovereign_weights.lookup import fetch_manifest, read_cached, write_cached  # noqa: PLC0415
    from sovereign_weights.manifest import ManifestError, describe_directory  # noqa: PLC0415

    facts: dict[str, ModelFacts] = {}
    missing: list[str] = []
    for model in config.inference.models:
        revision = model.source.revision
        if from_dirs and model.name in from_dirs:
            try:
                facts[model.name] = describe_directory(from_dirs[model.name])
            except ManifestError as exc:
                missing.append(f"{model.name}: {exc}")
            continue
        cached = read_cached(manifest_cache, model.name, revision)
        if cached is not None:
            facts[model.name] = ModelFacts.of(cached)
            continue
        if not fetch:
            missing.append(f"{model.name}: no manifest of {revision} kept under {manifest_cache}")
            continue
        try:
            from sovereign_weights.store import (  # noqa: PLC0415
                StoreSettings,
                check_endpoint_allowed,
                make_client,
            )

            endpoint = check_endpoint_allowed(
                model.source.endpoint, config.residency.allowed_object_store_endpoints
            )
            client = make_client(StoreSettings(endpoint=endpoint))
            manifest = fetch_manifest(client, parse_object_uri(model.source.uri), revision)
        except (WeightsError, ValueError) as exc:
            missing.append(f"{model.name}: {exc}")
            continue
        except Exception as exc:
            # the store client's own errors (credentials, network) name what failed
            if not type(exc).__module__.startswith(("botocore", "boto3")):
                raise
            missing.append(f"{model.name}: {model.source.endpoint}: {exc}")
            continue
        write_cached(manifest_cache, model.name, manifest)
        facts[model.name] = ModelFacts.of(manifest)
    return facts, missing
