#!/bin/sh
# One-shot, in the MinIO image (which ships `mc`): the landing bucket, and a read-only user for the batch job
# (docker/minio/batch-job-read-policy.json) so the job never holds the MinIO root credentials. Idempotent.
set -eu
mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing local/transactions
mc admin policy create local batch-job-read /minio-init/batch-job-read-policy.json
mc admin user add local "$BATCH_S3_ACCESS_KEY_ID" "$BATCH_S3_SECRET_ACCESS_KEY" >/dev/null
# Attaching an already attached policy is an error in mc; the user has it either way.
mc admin policy attach local batch-job-read --user "$BATCH_S3_ACCESS_KEY_ID" >/dev/null 2>&1 || true
echo "minio-init: bucket transactions and read-only user for the batch job ready"
