"""pipeline_common."""
