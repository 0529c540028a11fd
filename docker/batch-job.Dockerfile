# The reference batch job (`batch-job`, docs/architecture.md) and the example ML API. No Airflow in here.
# Installs only from build/wheelhouse/ (scripts/containers/make_wheelhouse.sh), so it builds with no network:
#   scripts/containers/make_wheelhouse.sh
#   podman build --network none -f docker/batch-job.Dockerfile -t batch-orchestration/batch-job:0.1.0 .
# BASE_IMAGE: any Debian bookworm image with python3.11 and its venv module, e.g. the local
# localhost/python-base:bookworm (scripts/containers/make_base_image.sh) where no registry is reachable.
ARG BASE_IMAGE=docker.io/library/python:3.11.14-slim-bookworm

FROM ${BASE_IMAGE} AS install
COPY build/wheelhouse/ /wheelhouse/
# Hash-checked pins from uv.lock first, then the project itself without its (Airflow-laden) dependency list.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheelhouse \
        --require-hashes --requirement /wheelhouse/batch-job.requirements.txt \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps /wheelhouse/batch_orchestration-*.whl \
 && /opt/venv/bin/python -c "import batch_job"

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="batch-orchestration batch job" \
      org.opencontainers.image.description="Daily transaction batch: extract, validate, score, load" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Proprietary"
RUN useradd --no-log-init --uid 10001 --gid 0 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin batch
COPY --from=install /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001
WORKDIR /tmp
# Python as PID 1 ignores SIGTERM (no default action in a PID namespace) but handles SIGINT: `docker stop` and
# Airflow's on_kill then interrupt the job at once, and its open transaction rolls back.
STOPSIGNAL SIGINT
CMD ["batch-job"]
