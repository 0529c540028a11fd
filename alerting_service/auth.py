"""API keys: bearer tokens with a scope, checked in constant time; the service never runs open.

Keys come from ALERTING_API_KEYS (or ALERTING_API_KEYS_FILE) as `name:scope:key` entries separated by commas
or newlines, scope `ingest` (POST /v1/events) or `admin` (everything; admin implies ingest). Only the sha256
digest of each key is kept in memory. With no key configured on the embedded default, the first start writes
an ingest key and an admin key to `<data_dir>/api-keys` (mode 0600), and later starts read that file; the log
names the file, never a key. Any other deployment without keys refuses to start.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from alerting_service.config import ENV_PREFIX, ConfigError, Settings

log = logging.getLogger(__name__)

GENERATED_KEYS_FILE = "api-keys"
_KEY_MIN_LENGTH = 16
# A key's name: shown in errors and logs, stored with silences (at most 128 characters there).
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class Scope(enum.StrEnum):
    INGEST = "ingest"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    scope: Scope
    digest: bytes

    def allows(self, scope: Scope) -> bool:
        return self.scope is Scope.ADMIN or self.scope is scope


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_api_keys(text: str, source: str) -> tuple[ApiKey, ...]:
    """Parse `name:scope:key` entries; an error names the entry by its position only: what looks like its
    name may be a key (pasted alone, with a colon in it, or the parts in another order)."""
    keys = []
    entries = [entry.strip() for entry in text.replace("\n", ",").split(",") if entry.strip()]
    for position, entry in enumerate(entries, start=1):
        parts = entry.split(":", 2)
        if len(parts) < 3 or not all(parts):
            raise ConfigError(f"{source}: entry {position}: expected name:scope:key")
        name, scope, token = parts
        if not _KEY_NAME.fullmatch(name):
            raise ConfigError(
                f"{source}: entry {position}: the name must be 1-128 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        where = f"{source}: entry {position}"
        if scope not in Scope.__members__.values():
            raise ConfigError(f"{where}: scope must be ingest or admin")
        if len(token) < _KEY_MIN_LENGTH:
            raise ConfigError(f"{where}: the key must be at least {_KEY_MIN_LENGTH} characters")
        keys.append(ApiKey(name=name, scope=Scope(scope), digest=_digest(token)))
    names = [key.name for key in keys]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: key names must be unique")
    if not keys:
        raise ConfigError(f"{source}: no key configured")
    return tuple(keys)


class KeyRing:
    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        self._keys = keys

    def authenticate(self, token: str) -> ApiKey | None:
        """The key this token is, or None. Every digest is compared, so timing reveals nothing."""
        digest = _digest(token)
        found = None
        for key in self._keys:
            if hmac.compare_digest(key.digest, digest):
                found = key
        return found


def configured_keys(settings: Settings) -> tuple[ApiKey, ...] | None:
    """The keys the settings give; None when the embedded default is to generate them. Raises ConfigError."""
    if settings.api_keys is not None:
        return parse_api_keys(settings.api_keys.get_secret_value(), f"{ENV_PREFIX}API_KEYS")
    if not settings.uses_embedded_database:
        raise ConfigError(
            f"{ENV_PREFIX}API_KEYS: no API key configured (set it or {ENV_PREFIX}API_KEYS_FILE); "
            "the service does not run without authentication"
        )
    return None


def load_key_ring(settings: Settings) -> KeyRing:
    keys = configured_keys(settings)
    if keys is not None:
        return KeyRing(keys)
    path = settings.data_dir / GENERATED_KEYS_FILE
    try:
        return KeyRing(parse_api_keys(_generated_keys(path), str(path)))
    except OSError as exc:
        # A data dir that is a file, not writable by the service's user, or a keys file it cannot read: a
        # setting to fix, said as one, not a traceback.
        raise ConfigError(
            f"{ENV_PREFIX}DATA_DIR: cannot use the generated API keys file {path}: {exc.strerror}"
            f" (set {ENV_PREFIX}API_KEYS, or a data dir the service can write)"
        ) from None


def _generated_keys(path: Path) -> str:
    """The generated keys file's content, written first if this is the first start."""
    if not path.exists():
        try:
            _write_generated_keys(path)
        except FileExistsError:
            pass  # another process started at the same moment and wrote them: use its keys
        else:
            log.warning("no API key configured: generated an ingest and an admin key in %s", path)
    return path.read_text(encoding="utf-8")


def _write_generated_keys(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = {"airflow": Scope.INGEST, "admin": Scope.ADMIN}
    content = "".join(f"{name}:{scope}:{secrets.token_urlsafe(32)}\n" for name, scope in keys.items())
    # Written whole beside it, then linked into place: a crash never leaves an empty or partial keys file, and
    # link() fails if the file exists, so two processes starting at once never overwrite each other's keys.
    descriptor, written = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(written, path)
    finally:
        os.unlink(written)
