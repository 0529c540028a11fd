"""`batch-job` / `python -m batch_job`: run the batch job for `BATCH_RUN_DATE`, configured by the environment.

Exit codes: 0 success, 65 invalid input data, 78 bad configuration, 1 anything transient (and anything
unexpected). Logs go to stderr; the JSON summary is the last line of stdout.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from batch_job.errors import JobError
from batch_job.pipeline import run_pipeline
from batch_job.settings import load_settings

log = logging.getLogger("batch_job")

UNEXPECTED_FAILURE_EXIT_CODE = 1


def main(argv: Sequence[str] | None = None) -> int:
    _parser().parse_args(argv)
    _configure_logging()
    try:
        summary = run_pipeline(load_settings())
    except JobError as exc:
        log.error("batch job failed (exit %d): %s", exc.exit_code, exc)  # an expected failure: no traceback
        return exc.exit_code
    except Exception:
        log.exception("batch job failed on an unexpected error")
        return UNEXPECTED_FAILURE_EXIT_CODE
    print(summary.model_dump_json(), flush=True)  # ruff: ignore[print]  # the summary is the output
    return 0


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="batch-job",
        description=(
            "Extract, validate, score and load one day of transactions. Configured only by the BATCH_* "
            "environment variables (see docs/architecture.md); takes no arguments."
        ),
    )


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise at batch sizes
    # botocore's debug records print request headers, the S3 access key id among them: never let them out.
    for chatty in ("botocore", "boto3", "urllib3"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
