"""Schema checks for rendered Kubernetes objects, shared by the unit tests and the contract test.

* built-in kinds: kubernetes-validate in strict mode, at the pinned K3s release's Kubernetes;
* KEDA's ScaledObject and TriggerAuthentication: the committed CRDs' ``openAPIV3Schema``
  (kubernetes-validate lets custom resources through unchecked), plus a walk that refuses fields the schema does not declare (the
  API server would silently prune them);
* Helm values: the keys and value types of the chart's own ``values.yaml`` (none of the pinned
  charts ships a ``values.schema.json``).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

DATA = Path(__file__).resolve().parent / "data"
KEDA_CRD = DATA / "keda-2.16.1" / "keda.sh_scaledobjects.yaml"
KEDA_TRIGGER_AUTH_CRD = DATA / "keda-2.16.1" / "keda.sh_triggerauthentications.yaml"
CHART_VALUES = DATA / "charts"


def kubernetes_version(k3s_version: str) -> str:
    """The Kubernetes release kubernetes-validate checks against for a K3s pin (v1.31.6+k3s1)."""
    found = re.match(r"v(\d+)\.(\d+)\.", k3s_version)
    assert found, k3s_version
    return f"{found.group(1)}.{found.group(2)}.0"


def validate_builtin(obj: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)


@cache
def keda_crd_schema(crd_file: Path) -> dict[str, Any]:
    """The openAPIV3Schema a committed KEDA CRD serves for v1alpha1."""
    crd = yaml.safe_load(crd_file.read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
    return schema


def validate_keda_object(obj: dict[str, Any], crd_file: Path) -> None:
    schema = keda_crd_schema(crd_file)
    jsonschema.validate(obj, schema)
    undeclared = undeclared_fields(obj, schema)
    assert not undeclared, f"fields the KEDA CRD does not declare: {undeclared}"


def scaled_object_schema() -> dict[str, Any]:
    return keda_crd_schema(KEDA_CRD)


def undeclared_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths in ``value`` that ``schema`` does not declare (and would be pruned)."""
    found: list[str] = []
    if isinstance(value, dict) and "properties" in schema:
        preserve = schema.get("x-kubernetes-preserve-unknown-fields") or schema.get(
            "additionalProperties"
        )
        for key, item in value.items():
            if key in schema["properties"]:
                found += undeclared_fields(item, schema["properties"][key], f"{path}.{key}")
            elif not preserve:
                found.append(f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            found += undeclared_fields(item, schema["items"], f"{path}[{i}]")
    return found


def validate_scaled_object(obj: dict[str, Any]) -> None:
    validate_keda_object(obj, KEDA_CRD)


def validate_trigger_authentication(obj: dict[str, Any]) -> None:
    validate_keda_object(obj, KEDA_TRIGGER_AUTH_CRD)


def chart_defaults(chart: str, version: str) -> Any:
    return yaml.safe_load((CHART_VALUES / f"{chart}-{version}" / "values.yaml").read_text())


def values_problems(ours: Any, defaults: Any, path: str = "") -> list[str]:
    """Where ``ours`` names a key the chart does not have or gives it another kind of value.

    A default of ``null`` or ``{}`` is a free-form slot: anything goes below it."""
    if defaults is None or defaults == {}:
        return []
    if isinstance(defaults, dict):
        if not isinstance(ours, dict):
            return [f"{path}: expected a mapping like the chart's default"]
        problems = []
        for key, value in ours.items():
            if key not in defaults:
                problems.append(f"{path}.{key}: not a value of this chart")
            else:
                problems += values_problems(value, defaults[key], f"{path}.{key}")
        return problems
    for kind in (bool, list, str, int):
        if isinstance(defaults, kind) and not isinstance(ours, kind):
            return [f"{path}: expected {kind.__name__} like the chart's default"]
    return []
