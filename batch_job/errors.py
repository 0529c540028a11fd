"""The job's failure classes, each carrying the process exit code the batch job contract gives it.

The DAG decides whether to retry from the exit code alone, so every failure the job can foresee is raised as
one of these: `InvalidInputError` (65, the data itself is wrong: retrying cannot help), `ConfigError` (78, the
environment is wrong: retrying cannot help either) and `TransientError` (1, a peer is unavailable: a later
retry may succeed).
"""

from __future__ import annotations

import os


class JobError(Exception):
    """A failure of the batch job with the exit code the contract assigns to it."""

    exit_code: int = 1


class InvalidInputError(JobError):
    """The input data is invalid as a whole (unreadable CSV, missing columns)."""

    exit_code = os.EX_DATAERR


class ConfigError(JobError):
    """The job's configuration is missing, malformed or refused by a peer (bad credentials, wrong URL)."""

    exit_code = os.EX_CONFIG


class TransientError(JobError):
    """A peer (object store, ML API, database) is unavailable; retrying the job later may succeed."""

    exit_code = 1
