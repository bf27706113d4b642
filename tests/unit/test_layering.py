"""The seams hold: every module sits in a layer and imports nothing from a layer above its own;
no import cycle; pure layers (config, plan, the images' packages) import neither Pulumi, paramiko
nor the S3 client where they must not; only the executor uses paramiko; the plan writes no file.

The import graph is read from the sources (every ``import``, at module level or inside a
function, ``TYPE_CHECKING`` blocks included): an import inside a function still makes the
module depend on the one it names.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_PACKAGES = {
    "sovereign_gateway": ROOT / "images" / "gateway" / "sovereign_gateway",
    "sovereign_weights": ROOT / "images" / "weights" / "sovereign_weights",
}
# Lowest first: a module may import its own layer's modules and lower layers', never a higher one.
# Module names match a layer by their longest listed prefix; a module no prefix matches fails the
# test until it is placed.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # each ships in its own slim image: it imports no other first-party package (checked below)
    ("runtime packages", tuple(RUNTIME_PACKAGES)),
    ("package metadata", ("components",)),
    # the typed inventory is read at the config boundary (the sources package's __init__ is empty)
    ("config", ("components.config", "components.sources.inventory")),
    ("plan", ("components.plan",)),
    # the effectful code: SSH, the lab's QEMU guests, the object store, the review tree on disk
    (
        "execution",
        (
            "components.execution",
            "components.lab",
            "components.model_facts",
            "components.review_tree",
        ),
    ),
    (
        "providers and verification",
        (
            "components.providers",
            "components.verification",
            "components.policy",
            "components.rollout",
        ),
    ),
    (
        "components",
        (
            "components.sources",
            "components.wiring",
            "components.nvme_weight_cache",
            "components.gpu_host",
            "components.fleet",
            "components.k3s_cluster",
            "components.inference_stack",
        ),
    ),
    ("program", ("components.cli", "components.__main__", "__main__")),
)


def imported_after(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(out.stdout.split())


# (modules imported together, top-level packages that must stay out of the process)
SEAMS = [
    ("components.config", {"pulumi", "paramiko"}),
    ("components.plan", {"pulumi", "paramiko"}),
    ("components.cli", {"pulumi", "paramiko"}),
    ("components.plan.kubernetes, components.plan.render", {"pulumi", "paramiko", "boto3"}),
    # the plan sizes models from kept manifests, without the S3 client
    ("components.plan.sizing", {"boto3", "botocore"}),
    # the warmer and gateway images ship their own package only
    (
        "sovereign_weights.__main__, sovereign_weights.warm, sovereign_weights.publish",
        {"pulumi", "components", "paramiko", "sovereign_gateway"},
    ),
    (
        "sovereign_gateway.__main__, sovereign_gateway.service",
        {"pulumi", "components", "paramiko", "boto3", "sovereign_weights"},
    ),
]


@pytest.mark.parametrize(("modules", "forbidden"), SEAMS, ids=[m for m, _ in SEAMS])
def test_a_pure_layer_imports_none_of_the_forbidden_packages(
    modules: str, forbidden: set[str]
) -> None:
    loaded = imported_after(modules)
    pulled_in = sorted({m.split(".")[0] for m in loaded} & forbidden)
    assert not pulled_in, f"{modules} pulls in {', '.join(pulled_in)}"


def test_only_the_executor_imports_paramiko() -> None:
    users = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "components").rglob("*.py")
        if "import paramiko" in path.read_text() or "from paramiko" in path.read_text()
    ]
    assert users == ["components/execution/ssh.py"]


@dataclass(frozen=True)
class Module:
    name: str
    path: Path


def first_party_modules() -> dict[str, Module]:
    """Every module of ``components``, the program and the runtime packages, by dotted name."""
    found: dict[str, Module] = {"__main__": Module("__main__", ROOT / "__main__.py")}
    roots = {"components": ROOT / "components", **RUNTIME_PACKAGES}
    for package, directory in roots.items():
        for path in directory.rglob("*.py"):
            parts = [package, *path.relative_to(directory).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join(parts)
            found[name] = Module(name, path)
    return found


MODULES = first_party_modules()


def imported_names(module: Module) -> Iterator[str]:
    """The dotted names ``module`` imports, relative imports resolved; ``from a import b`` names
    ``a.b`` when that is a module, else ``a``."""
    tree = ast.parse(module.path.read_text(), str(module.path))
    package = module.name if module.path.name == "__init__.py" else module.name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield submodule if submodule in MODULES else base


def first_party_imports(module: Module) -> set[str]:
    """The first-party modules ``module`` imports (the nearest enclosing module of each name)."""
    found = set()
    for imported in imported_names(module):
        name = imported
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module.name:
            found.add(name)
    return found


GRAPH = {name: first_party_imports(module) for name, module in MODULES.items()}


def layer_of(module: str) -> int | None:
    """The index in :data:`LAYERS` of the longest prefix matching ``module``."""
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def test_the_import_graph_sees_the_modules_and_their_imports() -> None:
    # a parser that found nothing would let every test below pass
    assert {"components.plan.host_steps", "sovereign_gateway.service", "__main__"} <= set(MODULES)
    assert "components.plan.cluster" in GRAPH["components.plan.host_steps"]
    assert "components.fleet" in GRAPH["__main__"]
    # an import inside a function counts (the provider imports the executor when it runs)
    assert "components.execution.ssh" in GRAPH["components.providers.host_step"]


def test_every_module_is_placed_in_a_layer() -> None:
    unplaced = sorted(name for name in MODULES if layer_of(name) is None)
    assert not unplaced, f"add these modules to a layer in LAYERS: {', '.join(unplaced)}"


def test_no_module_imports_from_a_higher_layer() -> None:
    upward = []
    for name, imports in sorted(GRAPH.items()):
        own = layer_of(name)
        for target in sorted(imports):
            theirs = layer_of(target)
            if own is not None and theirs is not None and theirs > own:
                upward.append(f"{name} ({LAYERS[own][0]}) imports {target} ({LAYERS[theirs][0]})")
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


@pytest.mark.parametrize("package", sorted(RUNTIME_PACKAGES))
def test_a_runtime_package_imports_no_other_first_party_package(package: str) -> None:
    foreign = sorted(
        f"{name} imports {target}"
        for name, imports in GRAPH.items()
        if name.split(".")[0] == package
        for target in imports
        if target.split(".")[0] != package
    )
    assert not foreign, "\n".join(foreign)


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_cycle_finder_finds_a_cycle_through_three_modules() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycle_among_first_party_modules() -> None:
    cycles = import_cycles(GRAPH)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


# Calls that write to or remove from the file system: the plan builds data, its callers write it.
WRITING_CALLS = frozenset(
    {"write_text", "write_bytes", "mkdir", "makedirs", "unlink", "rmdir", "rmtree", "chmod"}
)


def test_the_plan_writes_no_file() -> None:
    writers = []
    for name, module in sorted(MODULES.items()):
        if layer_of(name) != layer_of("components.plan"):
            continue
        for node in ast.walk(ast.parse(module.path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            called = node.func
            attribute = called.attr if isinstance(called, ast.Attribute) else None
            if attribute in WRITING_CALLS or (isinstance(called, ast.Name) and called.id == "open"):
                writers.append(f"{name}:{node.lineno}")
    assert not writers, f"the plan writes files at {', '.join(writers)}"
