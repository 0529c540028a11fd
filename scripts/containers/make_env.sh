#!/usr/bin/env bash
# Writes .env for docker-compose.yaml with fresh random secrets, one for each placeholder of .env.example.
# Never overwrites an existing .env. The file is git-ignored and readable by its owner only.
#
#   scripts/containers/make_env.sh [ENV_FILE]
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$repo/.env}"
[[ -e "$out" ]] && { echo "make_env: $out exists, left as it is" >&2; exit 0; }

umask 077
python3 - "$repo/.env.example" "$out" <<'PY'
import base64
import secrets
import sys

example, out = sys.argv[1:]
lines = []
for line in open(example, encoding="utf-8"):
    name, sep, value = line.rstrip("\n").partition("=")
    if sep and value.startswith("placeholder"):
        if name == "AIRFLOW_FERNET_KEY":
            value = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        elif name == "ALERTING_WEBHOOK_SIGNING_KEY":
            value = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        else:
            value = secrets.token_hex(24)  # URL- and JSON-safe
        line = f"{name}={value}"
    lines.append(line.rstrip("\n"))
open(out, "w", encoding="utf-8").write("\n".join(lines) + "\n")
PY
echo "make_env: wrote $out" >&2
