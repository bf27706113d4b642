"""Each model's sizing facts (its manifest), read from a local directory, the local manifest cache,
or the model's EU object store: the I/O that ``sovereign size``, ``validate`` and the Pulumi program
share before the pure sizing rule in :mod:`components.plan.sizing` judges them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sovereign_weights.manifest import ModelFacts

from components.config import StackConfig


class FromDirError(ValueError):
    """A ``--from-dir NAME=DIR`` that names no model of the stack, or no directory."""


def check_from_dirs(config: StackConfig, given: Sequence[tuple[str, Path]]) -> dict[str, Path]:
    """The local model directories by model name, each NAME a model of the stack, once.

    A name the stack does not have would otherwise be ignored silently while the model the user
    meant is sized from its store, so it is refused with the names the stack has."""
    names = [model.name for model in config.inference.models]
    found: dict[str, Path] = {}
    for name, directory in given:
        if name not in names:
            raise FromDirError(
                f"--from-dir {name}={directory}: {name!r} is not a model of the stack "
                f"(models: {', '.join(names)})"
            )
        if name in found:
            raise FromDirError(f"--from-dir {name}: given twice ({found[name]}, {directory})")
        if not directory.is_dir():
            raise FromDirError(f"--from-dir {name}={directory}: not a directory")
        found[name] = directory
    return found


@dataclass
class FactsAtHand:
    """Sizing facts per model name, and why each other model of the stack has none."""

    facts: dict[str, ModelFacts] = field(default_factory=dict)
    unread: dict[str, str] = field(default_factory=dict)  # model name -> reason


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
    """Sizing facts per model name, and one line ``NAME: reason`` per model whose manifest could
    not be read (see :func:`read_model_facts`)."""
    found = read_model_facts(config, manifest_cache, from_dirs, fetch=fetch)
    return found.facts, [f"{name}: {reason}" for name, reason in found.unread.items()]


def read_model_facts(
    config: StackConfig,
    manifest_cache: Path,
    from_dirs: dict[str, Path] | None = None,
    *,
    fetch: bool = True,
) -> FactsAtHand:
    """Sizing facts per model name, and the reason for each model whose manifest could not be read.

    A model named in ``from_dirs`` is described from that local directory; any other from its
    manifest kept under ``manifest_cache``, else (when ``fetch``) read from the model's endpoint
    (allowed by the residency policy, which the config boundary has checked) and kept there.
    ``validate`` calls this with ``fetch=False``: offline, cached manifests only.
    """
    from sovereign_weights.errors import WeightsError  # noqa: PLC0415
    from sovereign_weights.layout import parse_object_uri  # noqa: PLC0415
    from sovereign_weights.lookup import fetch_manifest, read_cached, write_cached  # noqa: PLC0415
    from sovereign_weights.manifest import ManifestError, describe_directory  # noqa: PLC0415

    found = FactsAtHand()
    for model in config.inference.models:
        revision = model.source.revision
        if from_dirs and model.name in from_dirs:
            try:
                found.facts[model.name] = describe_directory(from_dirs[model.name])
            except ManifestError as exc:
                found.unread[model.name] = str(exc)
            continue
        cached = read_cached(manifest_cache, model.name, revision)
        if cached is not None:
            found.facts[model.name] = ModelFacts.of(cached)
            continue
        if not fetch:
            found.unread[model.name] = f"no manifest of {revision} kept under {manifest_cache}"
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
            found.unread[model.name] = str(exc)
            continue
        except Exception as exc:
            # the store client's own errors (credentials, network) name what failed
            if not type(exc).__module__.startswith(("botocore", "boto3")):
                raise
            found.unread[model.name] = f"{model.source.endpoint}: {exc}"
            continue
        write_cached(manifest_cache, model.name, manifest)
        found.facts[model.name] = ModelFacts.of(manifest)
    return found
