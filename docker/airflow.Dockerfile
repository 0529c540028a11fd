# Airflow 3.3.2 with this project installed (pipeline_common, the DAGs' providers) and the DAGs baked in.
# The versions are the ones of uv.lock (build/wheelhouse/airflow-constraints.txt), so the image runs what the
# tests ran. It needs the apache/airflow base image and PyPI at build time:
#   scripts/containers/make_wheelhouse.sh && docker compose build
# Not built on the project's CI machines (no registry there): docker-compose.yaml is validated instead.
# The slim image carries no providers of its own, so nothing in it disagrees with the lock.
ARG AIRFLOW_IMAGE=docker.io/apache/airflow:slim-3.3.2-python3.11
FROM ${AIRFLOW_IMAGE}
ARG AIRFLOW_VERSION=3.3.2
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="batch-orchestration Airflow" \
      org.opencontainers.image.description="Airflow 3.3 with the batch pipeline DAGs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Proprietary"

COPY --chown=airflow:0 build/wheelhouse/batch_orchestration-*.whl build/wheelhouse/airflow-constraints.txt /tmp/wheels/
# As the image's `airflow` user, the way the Airflow image documentation installs extra packages.
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" /tmp/wheels/batch_orchestration-*.whl \
        --constraint /tmp/wheels/airflow-constraints.txt \
 && rm -rf /tmp/wheels \
 && mkdir -p /opt/airflow/auth /opt/airflow/reports
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
USER airflow
