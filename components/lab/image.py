"""The lab image: built from the recipe in ``images/lab-host/`` and cached by the recipe's hash.

The recipe is every file under ``images/lab-host/`` except its README; changing any of them
gives a new hash and therefore a new cache entry, built from Debian's package repos by the recipe's
``build.sh`` (debootstrap, root needed). An unchanged recipe reuses the cached build.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

RECIPE_DIR_ENV = "SOVEREIGN_LAB_RECIPE"
BUILD_SCRIPT = "build.sh"
NOT_RECIPE = frozenset({"README.md"})
NOT_RECIPE_DIRS = frozenset({"__pycache__"})
HASH_LENGTH = 16
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


class ImageBuildError(RuntimeError):
    """The image recipe could not be built."""


@dataclass(frozen=True)
class LabImage:
    """A built image in the cache."""

    directory: Path
    recipe_hash: str

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    @property
    def root_disk(self) -> Path:
        return self.directory / "base.qcow2"

    @property
    def bootstrap_key(self) -> Path:
        """Client key the image authorizes for root until the lab installs its own."""
        return self.directory / "bootstrap_ed25519"

    @property
    def template_host_key_public(self) -> Path:
        return self.directory / "template_host_ed25519_key.pub"

    def is_complete(self) -> bool:
        return all(
            path.is_file()
            for path in (
                self.kernel,
                self.initrd,
                self.root_disk,
                self.bootstrap_key,
                self.template_host_key_public,
            )
        )


def default_recipe_dir() -> Path:
    """``$SOVEREIGN_LAB_RECIPE`` or ``images/lab-host`` in the checkout this package runs from."""
    if os.environ.get(RECIPE_DIR_ENV):
        return Path(os.environ[RECIPE_DIR_ENV]).absolute()
    return Path(__file__).resolve().parents[2] / "images" / "lab-host"


def recipe_files(recipe_dir: Path) -> list[Path]:
    """The files whose content defines the image, sorted by their path inside the recipe."""
    files = [
        path
        for path in recipe_dir.rglob("*")
        if path.is_file()
        and path.name not in NOT_RECIPE
        and not NOT_RECIPE_DIRS & set(path.relative_to(recipe_dir).parts)
    ]
    return sorted(files, key=lambda path: path.relative_to(recipe_dir).as_posix())


def recipe_hash(recipe_dir: Path) -> str:
    """A short hash over each recipe file's relative path, executable bit and content."""
    digest = hashlib.sha256()
    for path in recipe_files(recipe_dir):
        relative = path.relative_to(recipe_dir).as_posix()
        executable = "x" if os.access(path, os.X_OK) else "-"
        digest.update(f"{relative}\0{executable}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:HASH_LENGTH]


def debian_mirrors(sources_texts: list[str]) -> tuple[str, str]:
    """The (main, security) Debian mirrors named in apt sources, deb822 or one-line format."""
    uris: list[str] = []
    for text in sources_texts:
        for raw_line in text.splitlines():
            line = raw_line.strip()
            if line.startswith("URIs:"):
                uris += line.removeprefix("URIs:").split()
            elif line.startswith("deb "):
                uris += [field for field in line.split()[1:] if "://" in field][:1]
    debian = [uri.rstrip("/") for uri in uris if "debian" in uri]
    security = next((uri for uri in debian if uri.endswith("-security")), None)
    main = next((uri for uri in debian if not uri.endswith("-security")), None)
    return main or DEFAULT_MIRROR, security or DEFAULT_SECURITY_MIRROR


def host_debian_mirrors() -> tuple[str, str]:
    """The mirrors this machine's apt uses, so the image comes from the same place."""
    texts: list[str] = []
    for source in APT_SOURCES:
        candidates = sorted(source.glob("*")) if source.is_dir() else [source]
        for path in candidates:
            if path.is_file() and path.suffix in {".list", ".sources", ""}:
                texts.append(path.read_text(errors="replace"))
    return debian_mirrors(texts)


@contextmanager
def exclusive_lock(lock_file: Path) -> Iterator[None]:
    """Serialise builds of the same cache entry across processes."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_image(cache_dir: Path, recipe_dir: Path) -> LabImage:
    """The cache entry for the recipe as it is now (built or not)."""
    digest = recipe_hash(recipe_dir)
    return LabImage(cache_dir / f"image-{digest}", digest)


def ensure_image(cache_dir: Path, recipe_dir: Path, timeout_s: float) -> LabImage:
    """Return the cached image for this recipe, building it first when it is missing."""
    image = cached_image(cache_dir, recipe_dir)
    if image.is_complete():
        return image
    with exclusive_lock(cache_dir / f".image-{image.recipe_hash}.lock"):
        if image.is_complete():
            return image
        main_mirror, security_mirror = host_debian_mirrors()
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".building-", dir=cache_dir))
        try:
            print(
                f"lab: building image {image.recipe_hash} from {main_mirror} (about 2 minutes)",
                file=sys.stderr,
            )
            try:
                subprocess.run(
                    [
                        "bash",
                        str(recipe_dir / BUILD_SCRIPT),
                        str(staging),
                        main_mirror,
                        security_mirror,
                    ],
                    check=True,
                    stdin=subprocess.DEVNULL,
                    timeout=timeout_s,
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                raise ImageBuildError(f"{recipe_dir / BUILD_SCRIPT} failed: {exc}") from exc
            (staging / "recipe-hash").write_text(image.recipe_hash + "\n")
            if image.directory.exists():
                shutil.rmtree(image.directory)
            staging.rename(image.directory)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    return image
