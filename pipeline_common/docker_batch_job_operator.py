"""`run_batch_processing` in Docker mode: the batch job as a container of the pinned image (provider 4.6.1).

Every variable derived from a connection is read inside `execute()`, at each try, into `private_environment`,
which the provider neither templates nor renders; `environment` holds only `BATCH_RUN_DATE`, the XCom of
`prepare_environment`.
Exit codes and the summary follow the same contract as the local runner (`batch_job_operators`).

On `execution_timeout` the task runner calls `on_kill()`, which stops the container, but only if the timeout
reaches it: with `auto_remove="success"` the provider's clean-up removes the container without force while it
still runs, and the engine's refusal (an APIError) would replace the timeout, leaving the container running
beside the next try. `execute()` raises the timeout instead. `on_kill()` then also removes the stopped
container unless `auto_remove="never"`: its environment holds the connections' secrets.
"""

from __future__ import annotations

import re
from typing import Any

from airflow.providers.docker.exceptions import DockerContainerFailedException
from airflow.providers.docker.operators.docker import DockerOperator
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowTaskTimeout
from docker.errors import APIError

from pipeline_common.assets import INCOMING_TRANSACTIONS, SCORED_TRANSACTIONS
from pipeline_common.batch_job_operators import connection_job_environment, record_success
from pipeline_common.errors import batch_job_failure, job_failure_reason
from pipeline_common.settings import PipelineSettings

# Provider 4.6.1 reports a container's exit only as the repr of Docker's wait() result in the message.
_DOCKER_STATUS_CODE = re.compile(r"'StatusCode': (\d+)")


class DockerBatchJobOperator(DockerOperator):
    """The batch job as a container of the pinned image; the connections' variables via `private_environment`
    at execute time."""

    def __init__(self, *, settings: PipelineSettings, environment: Any, **kwargs: Any) -> None:
        tls = settings.docker_tls
        super().__init__(
            image=settings.image,
            docker_url=settings.docker_url,
            # With all three files the provider talks TLS (tcp:// becomes https://); settings refuses a
            # plain TCP engine URL without them unless BATCH_PIPELINE_DOCKER_PLAINTEXT=true.
            tls_ca_cert=str(tls.ca_cert) if tls else None,
            tls_client_cert=str(tls.client_cert) if tls else None,
            tls_client_key=str(tls.client_key) if tls else None,
            network_mode=settings.docker_network,
            mem_limit=settings.mem_limit,
            auto_remove=settings.auto_remove,
            # The engine may be remote: a host temp dir would not exist there, and the job needs none.
            mount_tmp_dir=False,
            environment=environment,
            # All output lines come back, so the summary can be found among them (see summary_line()).
            xcom_all=True,
            inlets=[INCOMING_TRANSACTIONS],
            outlets=[SCORED_TRANSACTIONS],
            **kwargs,
        )

    def execute(self, context: Context) -> dict[str, Any]:
        self._private_environment = connection_job_environment(self.log)
        try:
            output_lines = super().execute(context)
        except DockerContainerFailedException as exc:
            reason = job_failure_reason(str(line) for line in exc.logs or [])
            raise batch_job_failure(docker_exit_code(exc), reason) from None
        except APIError as exc:
            timeout = interrupting_timeout(exc)
            if timeout is None:
                raise
            self.log.warning("timed out while the container ran (the provider could not remove it: %s)", exc)
            raise timeout from None
        finally:
            self._private_environment = {}
        return record_success(context, self.environment, summary_line(output_lines or []))

    def on_kill(self) -> None:
        super().on_kill()  # stops the container; removes it only with auto_remove="force"
        if self.auto_remove == "success" and self.container is not None:
            # As provider 4.6.1 removes a failed container with "success"; a stopped one would keep the
            # secrets of `private_environment` readable with `docker inspect`.
            try:
                self.cli.remove_container(self.container["Id"], force=True)
            except APIError as error:
                self.log.warning("could not remove the stopped container: %s", error)


def summary_line(output_lines: list[str]) -> str | None:
    """The summary among a container's output lines: the last one that is a JSON object.

    Docker's attach stream interleaves stdout and stderr, and a log line written to stderr just before the
    summary can arrive after it, so "the last line" of the stream is not always stdout's last line. The job's
    log lines never start with "{", its summary always does."""
    return next((line for line in reversed(output_lines) if line.lstrip().startswith("{")), None)


def interrupting_timeout(exc: BaseException) -> AirflowTaskTimeout | None:
    """The `execution_timeout` that `exc` was raised while handling, if any."""
    cause = exc.__context__
    while cause is not None and not isinstance(cause, AirflowTaskTimeout):
        cause = cause.__context__
    return cause


def docker_exit_code(exc: DockerContainerFailedException) -> int:
    match = _DOCKER_STATUS_CODE.search(str(exc))
    # Without a status code the container failed in a way the job never saw (e.g. killed): retryable.
    return int(match.group(1)) if match else 1
