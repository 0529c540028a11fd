"""The pipeline's assets, defined once: producers and consumers import these objects, so names cannot drift.

The URIs are logical identifiers (the `x-` scheme is passed through by Airflow untouched) because the physical
location depends on the connections of each deployment; every event says where its data is in its extras.

Extras of each `SCORED_TRANSACTIONS` event (see docs/dags.md, "Asset contract"):
    run_date  "YYYY-MM-DD", the business date the rows belong to
    counts    {"read", "valid", "rejected", "scored", "loaded"}: integers from the batch job summary
    table     the table the rows were loaded into
    source    the object-store prefix (or file:// directory) the day's CSV objects were read from
"""

from __future__ import annotations

from airflow.sdk import Asset

GROUP = "batch_pipeline"

INCOMING_TRANSACTIONS = Asset(
    name="incoming_transactions",
    uri="x-batch-pipeline://object-store/transactions/incoming",
    group=GROUP,
)

SCORED_TRANSACTIONS = Asset(
    name="scored_transactions",
    uri="x-batch-pipeline://transactions-db/scored_transactions",
    group=GROUP,
)

SCORED_EVENT_COUNT_KEYS = ("read", "valid", "rejected", "scored", "loaded")
