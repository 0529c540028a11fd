"""alerting_service: durable alert fan-out for Airflow callbacks (see docs/alerting-service-design.md)."""

from importlib.metadata import version

__version__ = version("batch-orchestration")
