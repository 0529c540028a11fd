# The alert service (`alerting-service serve`, docs/alerting-service-design.md). No Airflow in here.
# Installs only from build/wheelhouse/ (scripts/containers/make_wheelhouse.sh), so it builds with no network:
#   scripts/containers/build_image.sh alerting-service
# BASE_IMAGE: any Debian bookworm image with python3.11 and its venv module (see batch-job.Dockerfile).
ARG BASE_IMAGE=docker.io/library/python:3.11.14-slim-bookworm

FROM ${BASE_IMAGE} AS install
COPY build/wheelhouse/ /wheelhouse/
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheelhouse \
        --require-hashes --requirement /wheelhouse/alerting-service.requirements.txt \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps /wheelhouse/batch_orchestration-*.whl \
 && /opt/venv/bin/python -c "import alerting_service.cli"

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="batch-orchestration alert service" \
      org.opencontainers.image.description="Durable alert fan-out for Airflow: email and signed webhooks" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Proprietary"
RUN useradd --no-log-init --uid 10001 --gid 0 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin alerting \
 && mkdir -p /var/lib/alerting-service \
 && chown 10001:0 /var/lib/alerting-service
COPY --from=install /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ALERTING_DATA_DIR=/var/lib/alerting-service
USER 10001
WORKDIR /var/lib/alerting-service
VOLUME ["/var/lib/alerting-service"]
EXPOSE 9095
STOPSIGNAL SIGINT
CMD ["alerting-service", "serve", "--host", "0.0.0.0", "--port", "9095"]
