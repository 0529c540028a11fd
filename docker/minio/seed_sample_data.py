"""One-shot, in the batch-job image: upload generated sample transactions for the last few days to MinIO,
at `s3://transactions/incoming/<YYYY-MM-DD>/transactions.csv`, where minio_default points the DAG.

Uses `python -m batch_job.sample_data` (deterministic per date; a few bad rows so rejects show up) and the
MinIO root credentials from the environment (the batch job's own user is read-only). Re-running overwrites the
same objects with the same content.
"""

import datetime as dt
import os
import subprocess  # ruff: ignore[suspicious-subprocess-import]  # runs the sample-data CLI with fixed arguments
import sys
import tempfile
from pathlib import Path

import boto3

BUCKET = "transactions"
PREFIX = "incoming"
DAYS = int(os.environ.get("SEED_DAYS", "3"))
ROWS = os.environ.get("SEED_ROWS", "1000")


def main() -> int:
    s3 = boto3.client(
        "s3",
        endpoint_url=os.environ["S3_ENDPOINT_URL"],
        aws_access_key_id=os.environ["MINIO_ROOT_USER"],
        aws_secret_access_key=os.environ["MINIO_ROOT_PASSWORD"],
        region_name="us-east-1",
    )
    today = dt.datetime.now(dt.UTC).date()
    with tempfile.TemporaryDirectory() as scratch:
        for days_ago in range(1, DAYS + 1):
            day = (today - dt.timedelta(days=days_ago)).isoformat()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "batch_job.sample_data",
                    "--date",
                    day,
                    "--out",
                    scratch,
                    "--rows",
                    ROWS,
                    "--bad-share",
                    "0.02",
                ],
                check=True,
            )
            for path in sorted((Path(scratch) / day).glob("*.csv")):
                s3.upload_file(str(path), BUCKET, f"{PREFIX}/{day}/{path.name}")
                sys.stderr.write(f"seed: uploaded s3://{BUCKET}/{PREFIX}/{day}/{path.name}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
