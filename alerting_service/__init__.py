"""alerting_service."""
