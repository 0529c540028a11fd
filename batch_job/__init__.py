"""batch_job."""
