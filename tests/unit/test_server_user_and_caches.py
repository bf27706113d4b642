"""The model server's user and compile caches, checked by running the upstream lookups for real.

The vllm-openai image has no passwd entry for the server's uid. PyTorch, Triton and vLLM decide
where their caches go (and PyTorch asks for the user name) in the files committed under
``tests/data/serving-caches`` at the versions that image ships. A child process under a uid
without a passwd entry runs those files, unchanged, with the environment the plan renders, its
container paths mapped to directories here the way the pod's mounts map them to the node.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sovereign_weights.cache import prepare_compile_dir

from components.config import load_stack_file
from components.plan.kubernetes import InferenceStackSpec
from components.plan.kubernetes.serving import (
    COMPILE_CACHE_DIR,
    COMPILE_CACHE_ENV,
    SCRATCH_DIR,
    SERVER_UID,
    cache_paths,
    image_digest,
    server_env,
    server_image,
)

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = ROOT / "tests" / "data" / "serving-caches"
RELEASES = ("torch-2.8.0", "triton-3.4.0", "vllm-0.11.0")

# What the server process does on its first compile, through the upstream code only.
PROBE = """
import getpass, json, os, sys
sys.path[:0] = sys.argv[1:]
found = {}
def attempt(name, lookup):
    try:
        found[name] = lookup()
    except Exception as exc:
        found[name] = type(exc).__name__ + ": " + str(exc)
attempt("user", getpass.getuser)
def torch_inductor():
    from torch._inductor.runtime import cache_dir_utils
    return cache_dir_utils.cache_dir()
def triton():
    from triton.runtime.cache import FileCacheManager
    return os.path.dirname(FileCacheManager("kernel").cache_dir)
def vllm():
    from vllm import envs
    path = os.path.join(envs.VLLM_CACHE_ROOT, "torch_compile_cache")
    os.makedirs(path, exist_ok=True)
    return path
attempt("torch", torch_inductor)
attempt("triton", triton)
attempt("vllm", vllm)
print(json.dumps(found))
"""


def uid_without_passwd_entry() -> int:
    """The first uid from the server's own without an entry on this machine."""
    for uid in range(SERVER_UID, SERVER_UID + 100000):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise AssertionError("every uid near the server's has a passwd entry")


def interpreter_for_anyone() -> str:
    """A Python the unprivileged child may execute (a root-only home hides the test's own)."""
    for candidate in (os.path.realpath(sys.executable), "/usr/bin/python3"):
        path = Path(candidate)
        parents = [path, *path.parents]
        if path.exists() and all(p.stat().st_mode & 0o001 for p in parents):
            return candidate
    raise AssertionError("no Python interpreter that another user may execute")


@pytest.fixture
def node() -> Iterator[Path]:
    """A directory the unprivileged child can reach (pytest's tmp_path is root's alone)."""
    with tempfile.TemporaryDirectory(prefix="sovereign-node-") as name:
        root = Path(name)
        root.chmod(0o755)
        yield root


def staged_upstream(node: Path) -> list[str]:
    """The committed upstream files back at their module paths, readable by the child."""
    roots = []
    for release in RELEASES:
        for stored in (UPSTREAM / release).rglob("*.py.txt"):
            target = node / "upstream" / release / stored.relative_to(UPSTREAM / release)
            target = target.with_name(target.name.removesuffix(".txt"))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(stored, target)
        roots.append(str(node / "upstream" / release))
    for path in (node / "upstream").rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return roots


def as_mounted(env: dict[str, str], mounts: dict[str, Path]) -> dict[str, str]:
    """``env`` with each container path under a mount point replaced by its directory here."""
    mapped = dict(env)
    for name, value in env.items():
        for mount_point, local in mounts.items():
            if value == mount_point or value.startswith(mount_point + "/"):
                mapped[name] = str(local) + value[len(mount_point) :]
                break
    return mapped


def run_probe(uid: int, env: dict[str, str], roots: list[str]) -> dict[str, str]:
    def become_uid() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    # -I -S: nothing of this machine's site-packages, only the committed upstream files
    done = subprocess.run(
        [interpreter_for_anyone(), "-I", "-S", "-c", PROBE, *roots],
        env=env,
        cwd="/",
        preexec_fn=become_uid,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, str] = json.loads(done.stdout)
    return result


@pytest.fixture
def rendered() -> tuple[InferenceStackSpec, dict[str, str]]:
    stack = load_stack_file(ROOT / "stacks" / "Pulumi.prod-fra.yaml")
    spec = InferenceStackSpec.from_stack(stack)
    model = spec.inference.models[0]
    return spec, {e["name"]: e["value"] for e in server_env(spec, model)}


@pytest.mark.skipif(os.geteuid() != 0, reason="becoming another uid needs root")
def test_a_server_uid_without_passwd_entry_resolves_its_user_and_compile_caches(
    node: Path, rendered: tuple[InferenceStackSpec, dict[str, str]]
) -> None:
    spec, env = rendered
    model = spec.inference.models[0]
    uid = uid_without_passwd_entry()
    with pytest.raises(KeyError):
        pwd.getpwuid(uid)
    # the node side, as the init container leaves it: the weights cache root's, the compile
    # directory of this revision and image the server's
    paths = cache_paths(spec, model)
    local = type(paths)(node / "cache", paths.model, paths.revision)
    compile_dir = prepare_compile_dir(local, image_digest(server_image(spec, model)), uid)
    local.model_dir.chmod(0o755)
    local.compile_root.chmod(0o755)
    (node / "cache").chmod(0o755)
    scratch = node / "scratch"  # the pod's emptyDir: world-writable like the kubelet's
    scratch.mkdir(mode=0o777)
    scratch.chmod(0o777)
    mounts = {COMPILE_CACHE_DIR: compile_dir, SCRATCH_DIR: scratch}

    found = run_probe(uid, as_mounted(env, mounts), staged_upstream(node))

    assert found["user"] == env["LOGNAME"] == env["USER"]
    assert found["torch"] == str(compile_dir / "torchinductor")
    assert found["triton"] == str(compile_dir / "triton")
    assert found["vllm"] == str(compile_dir / "vllm" / "torch_compile_cache")
    # every cache lands in the directory that outlives the pod, written by the server's user
    for made in ("torchinductor", "triton", "vllm/torch_compile_cache"):
        assert (compile_dir / made).stat().st_uid == uid
    assert not any(scratch.iterdir())


@pytest.mark.skipif(os.geteuid() != 0, reason="becoming another uid needs root")
def test_without_the_user_and_cache_variables_pytorch_cannot_name_its_cache(
    node: Path, rendered: tuple[InferenceStackSpec, dict[str, str]]
) -> None:
    """The environment as it was rendered before: HOME and XDG_CACHE_HOME only."""
    _, env = rendered
    uid = uid_without_passwd_entry()
    before = {k: v for k, v in env.items() if k not in {"USER", "LOGNAME", *COMPILE_CACHE_ENV}}
    scratch = node / "scratch"
    scratch.mkdir(mode=0o777)
    scratch.chmod(0o777)

    found = run_probe(uid, as_mounted(before, {SCRATCH_DIR: scratch}), staged_upstream(node))

    assert found["user"].startswith("KeyError")
    assert "uid not found" in found["user"]
    assert found["torch"].startswith("KeyError")
    # Triton and vLLM follow HOME and XDG_CACHE_HOME: into the emptyDir, lost at every start
    assert found["triton"].startswith(str(scratch))
    assert found["vllm"].startswith(str(scratch))


def test_the_upstream_lookups_are_the_ones_the_environment_names() -> None:
    """If an upstream release renamed a variable, the rendered names would go unread."""
    torch_source = (
        UPSTREAM / "torch-2.8.0/torch/_inductor/runtime/cache_dir_utils.py.txt"
    ).read_text()
    triton_source = (UPSTREAM / "triton-3.4.0/triton/knobs.py.txt").read_text()
    vllm_source = (UPSTREAM / "vllm-0.11.0/vllm/envs.py.txt").read_text()
    assert 'os.environ.get("TORCHINDUCTOR_CACHE_DIR")' in torch_source
    assert "getpass.getuser()" in torch_source
    assert 'env_str("TRITON_CACHE_DIR"' in triton_source
    assert 'os.getenv(\n            "VLLM_CACHE_ROOT",' in vllm_source
    assert set(COMPILE_CACHE_ENV) == {
        "TORCHINDUCTOR_CACHE_DIR",
        "TRITON_CACHE_DIR",
        "VLLM_CACHE_ROOT",
    }
