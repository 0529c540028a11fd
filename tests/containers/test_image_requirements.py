"""scripts/containers/image_requirements.py: an image's pins and hashes, walked from uv.lock."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest
from containers_support import REPO_ROOT, SCRIPTS
from packaging.requirements import Requirement

spec = importlib.util.spec_from_file_location("image_requirements", SCRIPTS / "image_requirements.py")
image_requirements = importlib.util.module_from_spec(spec)
spec.loader.exec_module(image_requirements)

LOCK = tomllib.loads((REPO_ROOT / "uv.lock").read_text())


def package(name: str, version: str = "1.0", **fields) -> dict:
    return {
        "name": name,
        "version": version,
        "source": {"registry": "https://pypi.org/simple"},
        "wheels": [{"hash": f"sha256:{name}-wheel"}],
        **fields,
    }


def names(packages: list[dict]) -> list[str]:
    return [p["name"] for p in packages]


def test_dependencies_are_followed_transitively():
    lock = {
        "package": [
            package("a", dependencies=[{"name": "b"}]),
            package("b", dependencies=[{"name": "c"}]),
            package("c"),
            package("unused"),
        ]
    }

    assert names(image_requirements.resolve(lock, [Requirement("a")])) == ["a", "b", "c"]


def test_a_dependency_for_another_platform_is_left_out():
    deps = [{"name": "colorama", "marker": "sys_platform == 'win32'"}, {"name": "b"}]
    lock = {"package": [package("a", dependencies=deps), package("b"), package("colorama")]}

    assert names(image_requirements.resolve(lock, [Requirement("a")])) == ["a", "b"]


def test_an_extra_brings_its_optional_dependencies():
    lock = {
        "package": [
            package("a", **{"optional-dependencies": {"fast": [{"name": "speedups"}]}}),
            package("speedups"),
        ]
    }

    assert names(image_requirements.resolve(lock, [Requirement("a")])) == ["a"]
    assert names(image_requirements.resolve(lock, [Requirement("a[fast]")])) == ["a", "speedups"]


def test_a_root_missing_from_the_lock_is_an_error_naming_it():
    with pytest.raises(image_requirements.LockError, match=r"nope is not in uv\.lock"):
        image_requirements.resolve({"package": [package("a")]}, [Requirement("nope")])


def test_every_line_pins_a_version_with_its_hashes():
    lines = image_requirements.requirement_lines([package("a", "2.1", sdist={"hash": "sha256:a-sdist"})])

    assert lines == ["a==2.1 --hash=sha256:a-wheel --hash=sha256:a-sdist"]


@pytest.mark.parametrize(
    "roots", sorted((REPO_ROOT / "docker").glob("*.requirements.in")), ids=lambda p: p.name
)
def test_the_images_roots_resolve_in_the_real_lock_without_airflow(roots: Path):
    resolved = names(image_requirements.resolve(LOCK, image_requirements.read_roots(roots)))

    assert resolved
    assert not [name for name in resolved if name.startswith("apache-airflow")]
