"""An EXAMPLE ML API for demos and tests: a few fixed rules, NOT a fraud model.

It speaks the `POST /predict` wire format of `batch_job.ml_contract` and scores each transaction
deterministically from its amount, country and hour plus a small hash-based spread, so the same transaction
always gets the same score. `GET /healthz` answers `{"status": "ok"}`. When `EXAMPLE_ML_API_KEY` is set,
`/predict` requires `Authorization: Bearer <that key>`.

Run it: `python -m batch_job.example_ml_api --host 127.0.0.1 --port 8765`.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import math
import os
from collections.abc import Sequence
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from batch_job.ml_contract import Prediction, PredictRequest, PredictResponse, TransactionFeatures

API_KEY_ENV = "EXAMPLE_ML_API_KEY"
MODEL_VERSION = "example-rules-1"
FRAUD_THRESHOLD = 0.5
# Made-up risk by country for the example; any other country gets DEFAULT_COUNTRY_RISK.
COUNTRY_RISK = {"DE": 0.02, "FR": 0.03, "NL": 0.02, "GB": 0.04, "US": 0.06, "BR": 0.2, "NG": 0.3, "RU": 0.3}
DEFAULT_COUNTRY_RISK = 0.1
NIGHT_HOURS = range(5)  # 00:00-04:59 UTC
NIGHT_RISK = 0.1
HASH_SPREAD = 0.1

BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


def fraud_score(transaction: TransactionFeatures) -> float:
    """A score in [0, 1]: up to 0.5 from the amount (0.5 from 1e6), plus country, night and hash spread."""
    amount_risk = 0.5 * min(math.log10(float(transaction.amount) + 1) / 6, 1.0)
    country_risk = COUNTRY_RISK.get(transaction.country.upper(), DEFAULT_COUNTRY_RISK)
    night_risk = NIGHT_RISK if transaction.timestamp.hour in NIGHT_HOURS else 0.0
    digest = hashlib.sha256(transaction.transaction_id.encode()).digest()
    spread = HASH_SPREAD * int.from_bytes(digest[:4], "big") / 2**32
    return round(min(1.0, amount_risk + country_risk + night_risk + spread), 4)


def create_app(api_key: str | None) -> FastAPI:
    app = FastAPI(
        title="Example ML API (rule-based example, not a fraud model)",
        description="An example of the ML API the batch job calls; see batch_job.ml_contract.",
        version=MODEL_VERSION,
    )

    def require_api_key(credentials: BearerCredentials) -> None:
        if api_key is None:
            return
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail="missing or wrong API key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.post("/predict", dependencies=[Depends(require_api_key)])
    def predict(request: PredictRequest) -> PredictResponse:
        predictions = []
        for transaction in request.transactions:
            score = fraud_score(transaction)
            predictions.append(
                Prediction(
                    transaction_id=transaction.transaction_id,
                    fraud_score=score,
                    is_fraud=score >= FRAUD_THRESHOLD,
                )
            )
        return PredictResponse(model_version=MODEL_VERSION, predictions=predictions)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batch_job.example_ml_api", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    app = create_app(os.environ.get(API_KEY_ENV) or None)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
