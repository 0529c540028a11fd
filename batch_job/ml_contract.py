"""The JSON wire format of the ML API's `POST /predict`, shared by the job's client and the example ML API.

Request: `{"transactions": [{"transaction_id", "account_id", "merchant_id", "amount": "12.34", "currency",
"timestamp": "2026-01-14T09:30:00Z", "country"}, ...]}` with 1 to `MAX_TRANSACTIONS_PER_REQUEST` transactions;
the amount is a decimal string so no precision is lost in a float.

Response: `{"model_version": "...", "predictions": [{"transaction_id", "fraud_score": 0.0-1.0, "is_fraud":
bool}]}` with exactly one prediction per transaction sent.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

MAX_TRANSACTIONS_PER_REQUEST = 10_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TransactionFeatures(_Strict):
    transaction_id: str = Field(min_length=1)
    account_id: str
    merchant_id: str
    amount: Decimal = Field(gt=0)
    currency: str = Field(min_length=3, max_length=3)
    timestamp: dt.datetime
    country: str = Field(min_length=2, max_length=2)


class PredictRequest(_Strict):
    transactions: list[TransactionFeatures] = Field(min_length=1, max_length=MAX_TRANSACTIONS_PER_REQUEST)


class Prediction(BaseModel):
    # Extra fields allowed: a newer API may add some, and the job must keep working. The values typed
    # strictly: a score of `true` or `"0.9"`, or an `is_fraud` of `1` or `"no"`, is a broken model server,
    # not a score to load (lax parsing read `true` as 1.0, the highest fraud score).
    transaction_id: str
    fraud_score: float = Field(ge=0.0, le=1.0, strict=True)
    is_fraud: bool = Field(strict=True)


class PredictResponse(BaseModel):
    model_version: str = Field(min_length=1)  # loaded with every row: which model scored it
    predictions: list[Prediction]
