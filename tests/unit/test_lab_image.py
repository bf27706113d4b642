"""The image recipe's hash (the cache key) and the Debian mirror the image is built from."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from components.lab.image import (
    DEFAULT_MIRROR,
    DEFAULT_SECURITY_MIRROR,
    cached_image,
    debian_mirrors,
    default_recipe_dir,
    recipe_files,
    recipe_hash,
)

# relative path -> content: what the fixture's recipe holds (README.md is not part of the recipe)
RECIPE = {
    "build.sh": "#!/usr/bin/env bash\necho build\n",
    "packages.txt": "openssh-server\n",
    "rootfs/etc/fstab": "/dev/vda / ext4 rw 0 1\n",
    "README.md": "# the lab host\n",
}


def write_recipe(directory: Path, order: list[str]) -> Path:
    for relative in order:
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        (directory / relative).write_text(RECIPE[relative])
    return directory


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    return write_recipe(tmp_path, list(RECIPE))


def test_the_hash_is_stable(tmp_path: Path) -> None:
    """Two copies of one recipe, written in opposite order at different times, share a key."""
    first = write_recipe(tmp_path / "first", list(RECIPE))
    second = write_recipe(tmp_path / "second", list(reversed(RECIPE)))
    for path in second.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    assert re.fullmatch(r"[0-9a-f]{16}", recipe_hash(first))
    assert recipe_hash(second) == recipe_hash(first)


@pytest.mark.parametrize("changed", [p for p in RECIPE if p != "README.md"])
def test_changing_any_recipe_file_changes_the_hash(tmp_path: Path, changed: str) -> None:
    unchanged = write_recipe(tmp_path / "unchanged", list(RECIPE))
    edited = write_recipe(tmp_path / "edited", list(RECIPE))
    (edited / changed).write_text(RECIPE[changed] + "# one more line\n")
    assert recipe_hash(edited) != recipe_hash(unchanged)


def test_changing_a_package_list_changes_the_hash(recipe: Path) -> None:
    before = recipe_hash(recipe)
    (recipe / "packages.txt").write_text("openssh-server\nmdadm\n")
    assert recipe_hash(recipe) != before


def test_changing_a_guest_file_changes_the_hash(recipe: Path) -> None:
    before = recipe_hash(recipe)
    (recipe / "rootfs" / "etc" / "fstab").write_text("/dev/vda / ext4 ro 0 1\n")
    assert recipe_hash(recipe) != before


def test_adding_a_file_changes_the_hash(recipe: Path) -> None:
    before = recipe_hash(recipe)
    (recipe / "rootfs" / "etc" / "hostname").write_text("lab\n")
    assert recipe_hash(recipe) != before


def test_moving_content_between_files_changes_the_hash(recipe: Path) -> None:
    before = recipe_hash(recipe)
    (recipe / "rootfs" / "etc" / "fstab").rename(recipe / "rootfs" / "fstab")
    assert recipe_hash(recipe) != before


def test_making_the_build_script_executable_changes_the_hash(recipe: Path) -> None:
    before = recipe_hash(recipe)
    (recipe / "build.sh").chmod(0o755)
    assert recipe_hash(recipe) != before


def test_the_readme_is_not_part_of_the_recipe(recipe: Path) -> None:
    before = recipe_hash(recipe)
    (recipe / "README.md").write_text("# the lab host, described again\n")
    assert recipe_hash(recipe) == before
    assert recipe / "README.md" not in recipe_files(recipe)


def test_the_cache_entry_is_named_for_the_hash(recipe: Path, tmp_path: Path) -> None:
    image = cached_image(tmp_path / "cache", recipe)
    assert image.directory == tmp_path / "cache" / f"image-{recipe_hash(recipe)}"
    assert not image.is_complete()


def test_the_project_recipe_is_found_and_has_a_build_script() -> None:
    recipe = default_recipe_dir()
    assert (recipe / "build.sh").is_file()
    assert recipe / "build.sh" in recipe_files(recipe)


DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""
ONE_LINE = """\
deb [arch=amd64] http://ftp.de.debian.org/debian/ bookworm main
deb http://security.debian.org/debian-security bookworm-security main
deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main
"""


def test_mirrors_from_deb822_sources() -> None:
    assert debian_mirrors([DEB822]) == (
        "http://deb.debian.org/debian",
        "http://deb.debian.org/debian-security",
    )


def test_mirrors_from_one_line_sources_ignore_other_repositories() -> None:
    assert debian_mirrors([ONE_LINE]) == (
        "http://ftp.de.debian.org/debian",
        "http://security.debian.org/debian-security",
    )


def test_without_sources_the_default_mirror_is_used() -> None:
    assert debian_mirrors([]) == (DEFAULT_MIRROR, DEFAULT_SECURITY_MIRROR)
