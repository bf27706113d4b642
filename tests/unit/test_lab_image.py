"""The image recipe's hash (the cache key) and the Debian mirror the image is built from."""

from __future__ import annotations

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


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    (tmp_path / "build.sh").write_text("#!/usr/bin/env bash\necho build\n")
    (tmp_path / "packages.txt").write_text("openssh-server\n")
    (tmp_path / "rootfs" / "etc").mkdir(parents=True)
    (tmp_path / "rootfs" / "etc" / "fstab").write_text("/dev/vda / ext4 rw 0 1\n")
    (tmp_path / "bench.py").write_text("print('bench')\n")
    return tmp_path


def test_the_hash_is_stable(recipe: Path) -> None:
    assert recipe_hash(recipe) == recipe_hash(recipe)
    assert len(recipe_hash(recipe)) == 16


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


def test_the_benchmark_is_not_part_of_the_recipe(recipe: Path) -> None:
    before = recipe_hash(recipe)
    (recipe / "bench.py").write_text("print('faster bench')\n")
    assert recipe_hash(recipe) == before
    assert recipe / "bench.py" not in recipe_files(recipe)


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
