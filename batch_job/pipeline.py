"""The batch job's stages in order: extract, validate, predict, load; returns the run's summary."""

from __future__ import annotations

import datetime as dt
import logging
import time

from pydantic import BaseModel

from batch_job.extract import extract_day
from batch_job.load import build_engine, check_database, load_day, rejected_transactions, scored_transactions
from batch_job.predict import MLApiClient, ScoredTransaction
from batch_job.settings import JobSettings
from batch_job.validate import Transaction, validate_day

log = logging.getLogger(__name__)


class StageCounts(BaseModel):
    read: int
    valid: int
    rejected: int  # validation rejects plus rows whose id was already loaded for another date
    scored: int
    loaded: int


class RunSummary(BaseModel):
    """The JSON summary of the batch job contract, printed as the last line of stdout."""

    run_date: dt.date
    source: str
    table: str
    rejects_table: str
    counts: StageCounts
    duration_seconds: float


def run_pipeline(settings: JobSettings) -> RunSummary:
    started = time.monotonic()
    engine = build_engine(settings)
    try:
        # First: a refused login or an unknown database fails the run before the day is read and scored.
        check_database(engine)
        extract = extract_day(settings)
        log.info("extract: %d files from %s", len(extract.files), extract.day_uri)
        validation = validate_day(extract.files, settings.run_date)
        log.info(
            "validate: %d rows read, %d valid, %d rejected",
            validation.read,
            len(validation.valid),
            len(validation.rejected),
        )
        scored = _score(settings, validation.valid)
        log.info("predict: %d transactions scored", len(scored))
        result = load_day(engine, settings.run_date, scored, validation.rejected)
        log.info(
            "load: %d rows in %s, %d in %s (%d of them already loaded for another date)",
            result.loaded,
            scored_transactions.name,
            result.rejected,
            rejected_transactions.name,
            result.rejected_as_loaded_for_other_date,
        )
    finally:
        engine.dispose()
    return RunSummary(
        run_date=settings.run_date,
        source=extract.day_uri,
        table=scored_transactions.name,
        rejects_table=rejected_transactions.name,
        counts=StageCounts(
            read=validation.read,
            valid=len(validation.valid),
            rejected=result.rejected,
            scored=len(scored),
            loaded=result.loaded,
        ),
        duration_seconds=round(time.monotonic() - started, 3),
    )


def _score(settings: JobSettings, transactions: list[Transaction]) -> list[ScoredTransaction]:
    if not transactions:
        return []  # nothing to ask: a day without valid rows must not depend on the ML API being up
    with MLApiClient(
        predict_url=settings.predict_url,
        api_key=settings.ml_api_key,
        timeout_seconds=settings.ml_timeout_seconds,
        max_retries=settings.ml_max_retries,
        backoff_seconds=settings.ml_retry_backoff_seconds,
    ) as client:
        return client.score(transactions, settings.ml_batch_size)
