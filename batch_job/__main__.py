"""`python -m batch_job`: the same as the `batch-job` command."""

from batch_job.cli import main

raise SystemExit(main())
