"""The node cache as a whole: what it holds, what is in use, what may be evicted, free room.

"In use" is decided from the kernel, not from a registry a crashed pod could leave stale: every
process's open descriptors (``/proc/PID/fd``), memory maps (``/proc/PID/maps``; vLLM maps
safetensors files) and working directory are compared by device and inode with the files of a
revision. Comparing inodes instead of paths works across mount namespaces, where a pod sees the
cache under another path. A pod process whose descriptors cannot be read makes eviction refuse: a
revision is evicted only when the warmer can prove no pod has it open. The warmer therefore runs
with the host's PID namespace (``hostPID``) and as root, or it evicts nothing.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sovereign_weights.errors import UsageError, WeightsError
from sovereign_weights.layout import (
    CACHE_FILESYSTEM_MARKER,
    PARTIAL_SUFFIX,
    CachePaths,
    check_segment,
    complete_revisions,
)

State = Literal["complete", "partial", "absent"]
_EVICTING_SUFFIX = ".evicting"


@dataclass(frozen=True)
class RevisionState:
    model: str
    revision: str
    state: State
    bytes_on_disk: int
    last_used: float | None  # mtime of the complete directory (``ensure`` touches it)


def _disk_bytes(root: Path) -> int:
    total = 0
    for path in _walk_files(root):
        try:
            total += path.stat().st_blocks * 512
        except FileNotFoundError:
            continue
    return total


def _walk_files(root: Path) -> Iterator[Path]:
    for base, _dirs, files in os.walk(root):
        for name in files:
            yield Path(base, name)


def require_cache_filesystem(cache: Path) -> None:
    """Refuse ``cache`` unless it is the root of the node's cache filesystem.

    The filesystem's label cannot be read inside a container (no block device, no blkid), and a
    bind-mounted hostPath differs in device from its container parent either way; the marker the
    host's cache step writes on the mounted filesystem can be read everywhere the cache is seen.
    """
    if not cache.is_dir():
        raise UsageError(f"--cache {cache}: no such directory")
    if not (cache / CACHE_FILESYSTEM_MARKER).is_file():
        raise UsageError(
            f"--cache {cache}: not the cache filesystem; expected {CACHE_FILESYSTEM_MARKER} at its "
            "root, which the host's cache step writes once it has mounted the NVMe cache (is the "
            "array mounted?)"
        )


def revision_state(cache: Path, model: str, revision: str) -> RevisionState:
    paths = CachePaths(cache, model, revision)
    if paths.complete_dir.is_dir():
        return RevisionState(
            model,
            revision,
            "complete",
            _disk_bytes(paths.complete_dir),
            paths.complete_dir.stat().st_mtime,
        )
    if paths.partial_dir.is_dir():
        return RevisionState(model, revision, "partial", _disk_bytes(paths.partial_dir), None)
    return RevisionState(model, revision, "absent", 0, None)


def list_cache(cache: Path) -> list[RevisionState]:
    """Every complete or partial revision found under ``cache``, sorted by model and revision."""
    found: list[RevisionState] = []
    if not cache.is_dir():
        return found
    for model_dir in sorted(cache.iterdir()):
        if model_dir.name.startswith(".") or not model_dir.is_dir():
            continue
        model = model_dir.name
        try:
            check_segment(model, "model name")
        except ValueError:
            continue  # not a directory this tool writes (lost+found on a fresh filesystem)
        revisions = set(complete_revisions(cache, model))
        for entry in model_dir.iterdir():
            name = entry.name
            if name.startswith(".") and name.endswith(PARTIAL_SUFFIX) and entry.is_dir():
                revisions.add(name[1 : -len(PARTIAL_SUFFIX)])
        for revision in sorted(revisions):
            try:
                found.append(revision_state(cache, model, revision))
            except ValueError:
                continue  # not a name this tool writes
    return found


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on ``path``'s filesystem."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


# --- in use --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenFiles:
    """(device, inode) of every file or directory some process holds, and what could not be read."""

    inodes: frozenset[tuple[int, int]]
    unreadable_pids: tuple[int, ...]


def _maps_inodes(text: str) -> Iterator[tuple[int, int]]:
    # address perms offset dev(major:minor, hex) inode [path]
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 5 or fields[4] == "0":
            continue
        major, _, minor = fields[3].partition(":")
        yield os.makedev(int(major, 16), int(minor, 16)), int(fields[4])


def _inodes_of(entry: Path) -> set[tuple[int, int]]:
    """What one process holds; PermissionError when the kernel will not tell this warmer."""
    inodes: set[tuple[int, int]] = set()
    for fd in (entry / "fd").iterdir():
        try:
            st = fd.stat()
        except (FileNotFoundError, ProcessLookupError):
            continue  # closed meanwhile
        except PermissionError:
            raise
        except OSError:
            continue  # an anonymous descriptor (socket, pipe, eventfd) is not a cache file
        inodes.add((st.st_dev, st.st_ino))
    inodes.update(_maps_inodes((entry / "maps").read_text(errors="replace")))
    try:
        st = (entry / "cwd").stat()
        inodes.add((st.st_dev, st.st_ino))
    except PermissionError:
        raise
    except OSError:
        pass
    return inodes


def _in_a_pod(entry: Path) -> bool:
    """True when the process runs in a Kubernetes pod, or when that cannot be told.

    The kubelet puts every pod under its ``kubepods`` cgroup (``kubepods.slice`` with the systemd
    driver), which ``/proc/PID/cgroup`` shows to any reader.
    """
    try:
        return "kubepods" in (entry / "cgroup").read_text(errors="replace")
    except FileNotFoundError:
        return False
    except OSError:
        return True


def open_files(proc: Path = Path("/proc")) -> OpenFiles:
    """Scan every process under ``proc`` (the warmer's own included).

    A process whose descriptors this warmer may not read is listed in ``unreadable_pids`` when it
    belongs to a pod: eviction then refuses. Unreadable processes outside pods (the node's own
    supervisors) are not what the rule protects and are passed over.
    """
    inodes: set[tuple[int, int]] = set()
    unreadable: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            inodes.update(_inodes_of(entry))
        except (FileNotFoundError, ProcessLookupError):
            continue  # the process exited during the scan
        except PermissionError:
            if _in_a_pod(entry):
                unreadable.append(int(entry.name))
    return OpenFiles(frozenset(inodes), tuple(sorted(unreadable)))


def in_use(root: Path, held: OpenFiles) -> bool:
    """True when some process holds ``root`` or anything under it."""
    for base, dirs, files in os.walk(root):
        for name in (*dirs, *files, "."):
            try:
                st = os.stat(Path(base, name), follow_symlinks=False)
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) in held.inodes:
                return True
    return False


# --- eviction ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Eviction:
    evicted: tuple[RevisionState, ...]
    kept_in_use: tuple[RevisionState, ...]
    free_after: int


class EvictionRefused(Exception):
    """Eviction cannot prove a revision unused (processes the warmer may not inspect)."""


def _pid_namespace_is_the_pods_own(proc: Path) -> bool:
    """True when this process runs in a pod without ``hostPID``: then /proc lists only the pod's
    own processes, and nothing could be proven unused. Told from the cgroups: in a pod, this
    process is under ``kubepods``; so is PID 1 unless PID 1 is the host's init."""
    try:
        own = (proc / "self" / "cgroup").read_text(errors="replace")
        first = (proc / "1" / "cgroup").read_text(errors="replace")
    except OSError:
        return True
    return "kubepods" in own and "kubepods" in first


def evict_lru(
    cache: Path,
    needed: int,
    protect: Iterable[tuple[str, str]],
    proc: Path = Path("/proc"),
) -> Eviction:
    """Remove least recently used complete revisions until ``needed`` bytes are free.

    Never removes a revision in ``protect`` (model, revision) or one a process has open. A
    revision is first renamed out of the layout (so nothing sees it half-deleted), then removed.
    """
    protected = set(protect)
    candidates = sorted(
        (
            s
            for s in list_cache(cache)
            if s.state == "complete" and (s.model, s.revision) not in protected
        ),
        key=lambda s: s.last_used or 0.0,
    )
    evicted: list[RevisionState] = []
    kept: list[RevisionState] = []
    free = free_bytes(cache)
    if free >= needed or not candidates:
        return Eviction((), (), free)
    if _pid_namespace_is_the_pods_own(proc):
        raise EvictionRefused(
            "the warmer sees only its own pod's processes, so no revision can be proven unused; "
            "run it with hostPID: true (and CAP_SYS_PTRACE, or as the pods' user) to evict"
        )
    held = open_files(proc)
    if held.unreadable_pids:
        raise EvictionRefused(
            f"cannot read the open files of {len(held.unreadable_pids)} process(es) "
            f"in pods (e.g. pid {held.unreadable_pids[0]}), so no revision can be proven unused; "
            "run the warmer with the host's PID namespace (hostPID) and as root"
        )
    for state in candidates:
        if free >= needed:
            break
        paths = CachePaths(cache, state.model, state.revision)
        if in_use(paths.complete_dir, held):
            kept.append(state)
            continue
        doomed = paths.model_dir / f".{state.revision}{_EVICTING_SUFFIX}"
        paths.complete_dir.rename(doomed)
        shutil.rmtree(doomed)
        _remove_compile_caches(paths)
        evicted.append(state)
        free = free_bytes(cache)
    return Eviction(tuple(evicted), tuple(kept), free)


def _remove_compile_caches(paths: CachePaths) -> None:
    """Compiled kernels are worth nothing without the weights they were built for."""
    if not paths.compile_root.is_dir():
        return
    doomed = paths.model_dir / f"{paths.compile_root.name}{_EVICTING_SUFFIX}"
    paths.compile_root.rename(doomed)
    shutil.rmtree(doomed)


def clear_abandoned_evictions(model_dir: Path) -> None:
    """Finish removals a killed eviction left behind (``.REV.evicting``)."""
    if not model_dir.is_dir():
        return
    for entry in model_dir.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(_EVICTING_SUFFIX):
            check_segment(entry.name[1 : -len(_EVICTING_SUFFIX)], "revision")
            shutil.rmtree(entry, ignore_errors=True)


# --- compile caches ------------------------------------------------------------------------


class CompileDirError(WeightsError):
    """The compile cache directory exists as something else than a directory."""


def prepare_compile_dir(paths: CachePaths, image_digest: str, owner: int) -> Path:
    """Make ``paths.compile_dir(image_digest)`` exist, owned by ``owner`` (user and group).

    Only the last directory is handed over: its parents stay root's, so the server can neither
    rename nor replace it, and eviction (as root) can always remove it. Ownership is changed only
    when it differs: the init container holds ``CAP_CHOWN`` for the first start alone.
    """
    target = paths.compile_dir(image_digest)
    target.mkdir(mode=0o755, parents=True, exist_ok=True)
    found = os.stat(target, follow_symlinks=False)
    if not stat.S_ISDIR(found.st_mode):
        raise CompileDirError(f"compile cache {target}: expected a directory")
    if (found.st_uid, found.st_gid) != (owner, owner):
        os.chown(target, owner, owner, follow_symlinks=False)
    return target
