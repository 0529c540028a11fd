"""DAG configuration from `BATCH_PIPELINE_*` environment variables, read when a DAG file is parsed.

Parsing must stay cheap and offline, so this reads the process environment only (no Airflow Variables, no
connections). A bad value raises `PipelineConfigError` naming the variable: the DAG then shows an import error
instead of failing at 02:00.

Which runner executes the batch job is configuration, not code: with `BATCH_PIPELINE_DOCKER_URL` set the job
runs as a container (DockerOperator); without it, as a local `python -m batch_job` process (the embedded
default).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pipeline_common.errors import PipelineConfigError

PREFIX = "BATCH_PIPELINE_"
DEFAULT_IMAGE = "batch-orchestration/batch-job:0.1.0"
AUTO_REMOVE_CHOICES = ("never", "success", "force")
# The longest delay, timeout or deadline taken: longer is a typo (a number of milliseconds, say).
LONGEST = timedelta(days=366)
# A memory limit as Docker takes it: bytes, or a number with a b/k/m/g unit.
_MEM_LIMIT = re.compile(r"^\d+[bkmg]?$", re.IGNORECASE)
# Docker URL schemes that reach the engine over unencrypted TCP unless the TLS files are given.
_PLAIN_TCP_SCHEMES = ("tcp", "http")
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
_DOCKER_SCHEME_CHARACTERS = string.ascii_letters + "+"
_DOCKER_TLS_VARIABLES = ("DOCKER_TLS_CA_CERT", "DOCKER_TLS_CLIENT_CERT", "DOCKER_TLS_CLIENT_KEY")
_SERVICE_LINK = re.compile(
    r"_(?:SERVICE_HOST|SERVICE_PORT(?:_\w+)?|PORT_\d+_(?:TCP|UDP|SCTP)(?:_(?:PROTO|PORT|ADDR))?)$"
)
_SERVICE_LINK_PORT_VALUE = re.compile(r"^(?:tcp|udp|sctp)://")
# Every variable load_settings reads, less the prefix; any other BATCH_PIPELINE_* is refused.
SETTING_NAMES = (
    "DOCKER_URL",
    "DOCKER_PLAINTEXT",
    *_DOCKER_TLS_VARIABLES,
    "IMAGE",
    "DOCKER_NETWORK",
    "MEM_LIMIT",
    "AUTO_REMOVE",
    "REPORTS_DIR",
    "RETRY_DELAY_SECONDS",
    "MAX_RETRY_DELAY_SECONDS",
    "EXECUTION_TIMEOUT_SECONDS",
    "DEADLINE_MINUTES",
)


@dataclass(frozen=True)
class DockerTls:
    """The engine's TLS (`docker --tlsverify`): PEM files on the workers, passed to the DockerOperator."""

    ca_cert: Path
    client_cert: Path
    client_key: Path


class Runner(Enum):
    DOCKER = "docker"
    LOCAL = "local"


@dataclass(frozen=True)
class PipelineSettings:
    docker_url: str | None
    docker_tls: DockerTls | None
    image: str
    docker_network: str | None
    mem_limit: str
    auto_remove: Literal["never", "success", "force"]
    reports_dir: Path
    retry_delay: timedelta
    max_retry_delay: timedelta
    # Each try of each task is stopped after this (the batch job with it: process or container).
    execution_timeout: timedelta
    # Deadline Alert: a run not finished this long after it was queued alerts; None turns it off.
    run_deadline: timedelta | None

    @property
    def runner(self) -> Runner:
        return Runner.DOCKER if self.docker_url else Runner.LOCAL


def load_settings(env: Mapping[str, str] | None = None) -> PipelineSettings:
    """Read and validate every `BATCH_PIPELINE_*` variable (defaults documented in docs/dags.md)."""
    env = os.environ if env is None else env
    _refuse_unknown_variables(env)

    def get(name: str) -> str | None:
        value = env.get(PREFIX + name, "").strip()
        return value or None

    airflow_home = Path(env.get("AIRFLOW_HOME") or "~/airflow").expanduser()
    docker_tls = _docker_tls({name: get(name) for name in _DOCKER_TLS_VARIABLES})
    return PipelineSettings(
        docker_url=_docker_url(get("DOCKER_URL"), docker_tls, plaintext=get("DOCKER_PLAINTEXT")),
        docker_tls=docker_tls,
        image=_pinned_image(get("IMAGE") or DEFAULT_IMAGE),
        docker_network=get("DOCKER_NETWORK"),
        mem_limit=_mem_limit(get("MEM_LIMIT") or "2g"),
        auto_remove=_auto_remove(get("AUTO_REMOVE") or "success"),
        reports_dir=_absolute_path("REPORTS_DIR", get("REPORTS_DIR") or str(airflow_home / "reports")),
        retry_delay=_seconds("RETRY_DELAY_SECONDS", get("RETRY_DELAY_SECONDS") or "300"),
        max_retry_delay=_seconds("MAX_RETRY_DELAY_SECONDS", get("MAX_RETRY_DELAY_SECONDS") or "1800"),
        execution_timeout=_seconds("EXECUTION_TIMEOUT_SECONDS", get("EXECUTION_TIMEOUT_SECONDS") or "3600"),
        run_deadline=_minutes_or_off("DEADLINE_MINUTES", get("DEADLINE_MINUTES") or "90"),
    )


def _refuse_unknown_variables(env: Mapping[str, str]) -> None:
    """A mistyped variable would be ignored: `BATCH_PIPELINE_DOCKER_ULR` would run the job as a local process
    instead of a container, unnoticed. Names only in the message: a value may be a secret."""
    known = [PREFIX + name for name in SETTING_NAMES]
    unknown = sorted(
        name
        for name, value in env.items()
        # Any case: the names are read upper case only, so batch_pipeline_docker_url would be ignored too.
        if name.upper().startswith(PREFIX) and name not in known and not _is_service_link(name, value)
    )
    if unknown:
        raise PipelineConfigError(
            "; ".join(f"{name} is not a setting{_closest(name, known)}" for name in unknown)
            + f" (the {PREFIX}* settings are listed in docs/dags.md)"
        )


def _is_service_link(name: str, value: str) -> bool:
    """A variable Kubernetes gives every pod for each Service of its namespace (one named batch-pipeline-...):
    `<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT[_<port>]`, `<NAME>_PORT_8080_TCP[_ADDR]` and
    `<NAME>_PORT=tcp://...`. It must not fail the DAG import."""
    if _SERVICE_LINK.search(name):
        return True
    return name.endswith("_PORT") and _SERVICE_LINK_PORT_VALUE.match(value) is not None


def _closest(name: str, known: list[str]) -> str:
    matches = difflib.get_close_matches(name.upper(), known, n=1)
    return f", did you mean {matches[0]}?" if matches else ""


def _docker_tls(files: Mapping[str, str | None]) -> DockerTls | None:
    """All three files or none: the provider silently talks plain TCP when one of them is missing."""
    given = [name for name, value in files.items() if value]
    if not given:
        return None
    if len(given) < len(files):
        missing = ", ".join(PREFIX + name for name in files if name not in given)
        raise PipelineConfigError(f"the engine's TLS needs {missing} too (all three files, or none)")
    paths = {name: _absolute_path(name, str(value)) for name, value in files.items()}
    return DockerTls(*(paths[name] for name in _DOCKER_TLS_VARIABLES))


def _docker_url(url: str | None, tls: DockerTls | None, *, plaintext: str | None) -> str | None:
    """The engine URL; a TCP one without TLS is refused unless chosen: the container's environment, which
    carries the connections' secrets, would cross the network in clear."""
    if plaintext not in (None, "true", "false"):
        raise PipelineConfigError(f"{PREFIX}DOCKER_PLAINTEXT={plaintext!r} must be true or false")
    if url is None:
        return url
    parts = urlsplit(url)
    if not parts.scheme or parts.scheme.strip(_DOCKER_SCHEME_CHARACTERS):
        # As Docker's client reads it (docker.utils.parse_host): without a scheme of letters, the URL is
        # tcp:// ("10.0.0.5:2375", "docker-engine.internal:2375": plain HTTP to that host).
        parts = urlsplit(f"//{url}", scheme="tcp")
    if tls is not None and parts.scheme == "http":
        # The provider turns only tcp:// into https://: an http:// URL keeps plain HTTP, TLS files or not.
        raise PipelineConfigError(
            f"{PREFIX}DOCKER_URL={url!r} is plain HTTP even with the engine's TLS files: use tcp:// or https://"
        )
    if tls is not None or plaintext == "true":
        return url
    # No host: Docker's client takes 127.0.0.1 (":2375"), or refuses the URL ("/var/run/docker.sock").
    host = parts.hostname
    if "@" in parts.netloc or "\\" in parts.netloc:
        # The host is read here after the last "@", but requests (urllib3) ends it at a backslash:
        # tcp://10.0.0.5\@localhost:2375 reaches 10.0.0.5 in plain HTTP. A loopback engine has no user info.
        host = parts.netloc
    if parts.scheme in _PLAIN_TCP_SCHEMES and host not in (*_LOOPBACK_HOSTS, None):
        raise PipelineConfigError(
            f"{PREFIX}DOCKER_URL={url!r} reaches the engine over unencrypted TCP, and the job's container "
            f"environment carries the connections' secrets: set {PREFIX}DOCKER_TLS_CA_CERT, "
            f"{PREFIX}DOCKER_TLS_CLIENT_CERT and {PREFIX}DOCKER_TLS_CLIENT_KEY, "
            f"or {PREFIX}DOCKER_PLAINTEXT=true for an engine on a private network (e.g. docker-compose's "
            "socket proxy)"
        )
    return url


def _pinned_image(image: str) -> str:
    # A tag after the last "/" (a registry port has its ":" before it) or a digest pins the image.
    name = image.rsplit("/", 1)[-1]
    if "@sha256:" in image:
        return image
    if ":" not in name:
        raise PipelineConfigError(
            f"{PREFIX}IMAGE={image!r} has no tag: pin a version, e.g. {DEFAULT_IMAGE!r}"
        )
    if name.endswith(":latest"):
        raise PipelineConfigError(
            f"{PREFIX}IMAGE={image!r} uses ':latest', which changes under a running pipeline: pin a version"
        )
    return image


def _mem_limit(value: str) -> str:
    if not _MEM_LIMIT.match(value):
        raise PipelineConfigError(
            f"{PREFIX}MEM_LIMIT={value!r} is not a Docker memory limit such as '2g' or '512m'"
        )
    return value


def _auto_remove(value: str) -> Literal["never", "success", "force"]:
    if value not in AUTO_REMOVE_CHOICES:
        raise PipelineConfigError(
            f"{PREFIX}AUTO_REMOVE={value!r} must be one of {', '.join(AUTO_REMOVE_CHOICES)}"
        )
    return value  # type: ignore[return-value]  # checked against the choices just above


def _absolute_path(name: str, value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise PipelineConfigError(f"{PREFIX}{name}={value!r} must be an absolute path")
    return path


def _seconds(name: str, value: str) -> timedelta:
    seconds = _duration(name, value, _amount(name, value, "seconds"), "seconds")
    if seconds is None:
        raise PipelineConfigError(f"{PREFIX}{name}={value!r} must be positive")
    return seconds


def _minutes_or_off(name: str, value: str) -> timedelta | None:
    amount = _amount(name, value, "minutes")
    if amount == 0:
        return None
    minutes = _duration(name, value, amount, "minutes")
    if minutes is None:
        raise PipelineConfigError(f"{PREFIX}{name}={value!r} must be 0 (off) or a positive number of minutes")
    return minutes


def _amount(name: str, value: str, unit: Literal["seconds", "minutes"]) -> float:
    # float() also takes "nan" and "inf", which timedelta refuses with an error naming no variable.
    try:
        amount = float(value)
    except ValueError:
        amount = math.nan
    if math.isnan(amount):
        raise PipelineConfigError(f"{PREFIX}{name}={value!r} is not a number of {unit}")
    return amount


def _duration(name: str, value: str, amount: float, unit: Literal["seconds", "minutes"]) -> timedelta | None:
    """The amount as a timedelta; None if it is not positive, or so small that it is no time at all (a
    deadline of 1e-12 minutes would be off without a word); refused past LONGEST (a typo)."""
    if amount <= 0:
        return None
    if amount > LONGEST.total_seconds() / (60 if unit == "minutes" else 1):
        raise PipelineConfigError(f"{PREFIX}{name}={value!r} is longer than {LONGEST.days} days")
    return timedelta(**{unit: amount}) or None
