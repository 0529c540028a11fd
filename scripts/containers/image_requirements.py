"""Pinned, hash-checked requirements for one image, taken from uv.lock so images run what the tests ran.

An image needs only part of the project's dependencies (the batch job must not carry Airflow). Its roots are
listed in `docker/<image>.requirements.in`; this walks uv.lock from those roots, for the images' platform
(CPython 3.11 on glibc x86_64 Linux), and prints `name==version --hash=...` lines for `pip --require-hashes`.

    python scripts/containers/image_requirements.py docker/batch-job.requirements.in [--lock uv.lock]
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# The environment markers of the images (Debian bookworm's python3 or python:3.11-slim-bookworm).
IMAGE_ENVIRONMENT = {
    "implementation_name": "cpython",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "python_full_version": "3.11.2",
    "python_version": "3.11",
    "sys_platform": "linux",
}


class LockError(Exception):
    """A root is not in uv.lock, or the lock names a dependency it does not describe."""


def read_roots(path: Path) -> list[Requirement]:
    """Requirement lines of a .in file (names with optional extras; '#' starts a comment)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def resolve(lock: dict, roots: list[Requirement]) -> list[dict]:
    """The lock entries of the roots and everything they need on the image platform, sorted by name."""
    packages = {canonicalize_name(p["name"]): p for p in lock["package"]}
    needed: dict[str, dict] = {}
    todo = [(canonicalize_name(r.name), sorted(r.extras)) for r in roots]
    while todo:
        name, extras = todo.pop()
        package = packages.get(name)
        if package is None:
            raise LockError(f"{name} is not in uv.lock: add it to pyproject.toml with `uv add` first")
        if "registry" not in package["source"]:
            raise LockError(f"{name} comes from {package['source']}, not a registry: cannot pin it by hash")
        first_visit = name not in needed
        needed[name] = package
        deps = list(package.get("dependencies", [])) if first_visit else []
        for extra in extras:
            deps += package.get("optional-dependencies", {}).get(extra, [])
        for dep in deps:
            if "marker" in dep and not Marker(dep["marker"]).evaluate(IMAGE_ENVIRONMENT):
                continue
            todo.append((canonicalize_name(dep["name"]), dep.get("extra", [])))
    return [needed[name] for name in sorted(needed)]


def requirement_lines(packages: list[dict]) -> list[str]:
    lines = []
    for package in packages:
        hashes = [wheel["hash"] for wheel in package.get("wheels", [])]
        if "sdist" in package:
            hashes.append(package["sdist"]["hash"])
        hash_args = " ".join(f"--hash={h}" for h in hashes)
        lines.append(f"{package['name']}=={package['version']} {hash_args}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", type=Path, help="docker/<image>.requirements.in")
    parser.add_argument("--lock", type=Path, default=Path(__file__).resolve().parents[2] / "uv.lock")
    args = parser.parse_args(argv)
    try:
        packages = resolve(tomllib.loads(args.lock.read_text()), read_roots(args.roots))
    except LockError as exc:
        sys.stderr.write(f"image_requirements: {args.roots}: {exc}\n")
        return 1
    header = f"# Generated from {args.lock.name} for the roots in {args.roots.name}; do not edit."
    sys.stdout.write("\n".join([header, *requirement_lines(packages)]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
