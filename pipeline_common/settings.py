"""DAG configuration from `BATCH_PIPELINE_*` environment variables, read when a DAG file is parsed.

Parsing must stay cheap and offline, so this reads the process environment only (no Airflow Variables, no
connections). A bad value raises `PipelineConfigError` naming the variable: the DAG then shows an import error
instead of failing at 02:00.

Which runner executes the batch job is configuration, not code: with `BATCH_PIPELINE_DOCKER_URL` set the job
runs as a container (DockerOperator); without it, as a local `python -m batch_job` process (the embedded
default).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Literal

from pipeline_common.errors import PipelineConfigError

PREFIX = "BATCH_PIPELINE_"
DEFAULT_IMAGE = "batch-orchestration/batch-job:0.1.0"
AUTO_REMOVE_CHOICES = ("never", "success", "force")
# A memory limit as Docker takes it: bytes, or a number with a b/k/m/g unit.
_MEM_LIMIT = re.compile(r"^\d+[bkmg]?$", re.IGNORECASE)


class Runner(Enum):
    DOCKER = "docker"
    LOCAL = "local"


@dataclass(frozen=True)
class PipelineSettings:
    docker_url: str | None
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

    def get(name: str) -> str | None:
        value = env.get(PREFIX + name, "").strip()
        return value or None

    airflow_home = Path(env.get("AIRFLOW_HOME") or "~/airflow").expanduser()
    return PipelineSettings(
        docker_url=get("DOCKER_URL"),
        image=_pinned_image(get("IMAGE") or DEFAULT_IMAGE),
        docker_network=get("DOCKER_NETWORK"),
        mem_limit=_mem_limit(get("MEM_LIMIT") or "2g"),
        auto_remove=_auto_remove(get("AUTO_REMOVE") or "success"),
        reports_dir=_absolute_dir("REPORTS_DIR", get("REPORTS_DIR") or str(airflow_home / "reports")),
        retry_delay=_seconds("RETRY_DELAY_SECONDS", get("RETRY_DELAY_SECONDS") or "300"),
        max_retry_delay=_seconds("MAX_RETRY_DELAY_SECONDS", get("MAX_RETRY_DELAY_SECONDS") or "1800"),
        execution_timeout=_seconds("EXECUTION_TIMEOUT_SECONDS", get("EXECUTION_TIMEOUT_SECONDS") or "3600"),
        run_deadline=_minutes_or_off("DEADLINE_MINUTES", get("DEADLINE_MINUTES") or "90"),
    )


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


def _absolute_dir(name: str, value: str) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise PipelineConfigError(f"{PREFIX}{name}={value!r} must be an absolute path")
    return path


def _seconds(name: str, value: str) -> timedelta:
    try:
        seconds = float(value)
    except ValueError:
        raise PipelineConfigError(f"{PREFIX}{name}={value!r} is not a number of seconds") from None
    if seconds <= 0:
        raise PipelineConfigError(f"{PREFIX}{name}={value!r} must be positive")
    return timedelta(seconds=seconds)


def _minutes_or_off(name: str, value: str) -> timedelta | None:
    try:
        minutes = float(value)
    except ValueError:
        raise PipelineConfigError(f"{PREFIX}{name}={value!r} is not a number of minutes") from None
    if minutes < 0:
        raise PipelineConfigError(f"{PREFIX}{name}={value!r} must be 0 (off) or a positive number of minutes")
    return timedelta(minutes=minutes) if minutes else None
