"""Webhook notifications: a generic JSON body signed per Standard Webhooks, or a Slack incoming-webhook body.

Two aiohttp client sessions, one for the receivers limited to public addresses and one for the others
(keep-alive connection pooling), redirects never followed, no cookies kept, each receiver's own timeout per
step (connect, each read). Only configured URLs are called, and private, loopback and link-local addresses
are refused unless the receiver allows them. Errors name the destination by scheme and host only: webhook
URLs often carry tokens.

Receivers that do not allow private addresses share a session whose resolver keeps only a name's public
addresses and whose sockets refuse any non-public address as they are made (aiohttp's socket factory, which
IP literals meet too): the address checked is the address connected to, so a name that resolves to a public
address once and to an internal one a moment later (DNS rebinding) cannot get through, only a name's public
addresses are ever connected to, and no lookup is added to a send. Through a proxy from the environment the
proxy resolves the destination: the destination is then checked by a lookup of this host's own before the
send, and the proxy, which the operator named, is connected to like any configured service.

aiohttp rather than httpx: sending is the dispatcher's hot path, and on this project's 2-core machines a POST
with its reply costs about 1,000 us of CPU through httpx 0.28 against 160 us through aiohttp 3.14
(benchmarks/webhook_clients.py: 4,000 POSTs of 400 bytes, 8 at a time, to a loopback receiver), which decides
whether one process can deliver 500 alerts a second while it ingests them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import urllib.request
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from standardwebhooks.webhooks import Webhook
from yarl import URL

from alerting_service.config import WebhookReceiver
from alerting_service.notify.base import DeliveryError, Notification, Reason, classify_http_status
from alerting_service.notify.templating import render_within

USER_AGENT = "alerting-service/1"
MAX_DRAINED_REPLY_BYTES = 64 * 1024
DRAIN_SECONDS = 1.0
# Slack answers 400 (permanent) to a Block Kit section whose text is longer.
SLACK_SECTION_MAX_CHARS = 3000


class NonPublicAddress(OSError):
    """A socket refused for a receiver without `allow_private_network`; one message for every address, so that
    aiohttp's happy-eyeballs connector raises it as it is when every address of a host is refused."""

    def __init__(self) -> None:
        super().__init__("non-public address refused (allow_private_network is off)")


class WebhookNotifier:
    def __init__(self) -> None:
        # Made in the event loop, at the first send: one for receivers limited to public addresses (guarded),
        # one for those allowed private ones and for sends through a proxy.
        self._sessions: dict[bool, aiohttp.ClientSession] = {}
        self._public_resolver: _PublicAddressResolver | None = None  # the guarded session's; closed by us
        # (scheme, host) -> the proxy HTTP(S)_PROXY / NO_PROXY name for it, as for any outbound HTTP of the
        # host. Looked up once: aiohttp's `trust_env` reads the environment and ~/.netrc again on every
        # request, a tenth of the CPU of a send. Proxy credentials go in the proxy URL.
        self._proxies: dict[tuple[str, str], str | None] = {}

    async def aclose(self) -> None:
        for session in self._sessions.values():
            await session.close()
        if self._public_resolver is not None:
            await self._public_resolver.close()

    def _client(self, *, guarded: bool) -> aiohttp.ClientSession:
        if guarded not in self._sessions:
            if guarded:
                self._public_resolver = _PublicAddressResolver()
            self._sessions[guarded] = aiohttp.ClientSession(
                headers={"user-agent": USER_AGENT},
                cookie_jar=aiohttp.DummyCookieJar(),  # a receiver's cookies must not reach the next receiver
                connector=aiohttp.TCPConnector(
                    limit=0,  # the dispatcher bounds concurrency per receiver
                    # Names through the resolver; IP literals skip it and meet the socket factory.
                    resolver=self._public_resolver if guarded else None,
                    socket_factory=_public_address_socket if guarded else None,
                ),
            )
        return self._sessions[guarded]

    def _proxy_for(self, url: str) -> str | None:
        parts = urlsplit(url)
        # The host and port only: the URL's user info (a token, often) is not part of NO_PROXY's match.
        host = parts.hostname or ""
        key = (parts.scheme, f"{host}:{parts.port}" if parts.port else host)
        if key not in self._proxies:
            self._proxies[key] = _environment_proxy(*key)
        return self._proxies[key]

    async def send(self, notification: Notification) -> None:
        receiver = notification.receiver
        if not isinstance(receiver, WebhookReceiver):
            raise TypeError(f"receiver {receiver.name!r} is not a webhook receiver")
        url = _url(receiver)
        destination = receiver.webhook.redacted_url
        proxy = self._proxy_for(url)
        guarded = not receiver.webhook.allow_private_network
        if guarded and proxy is not None:
            await refuse_private_destination(url, destination)
        body, headers = _request(notification, receiver)
        step = receiver.webhook.timeout_seconds
        try:
            async with self._client(guarded=guarded and proxy is None).post(
                URL(url, encoded=True),  # exactly as configured: no re-quoting of a signed or tokened URL
                data=body,
                headers=headers,
                allow_redirects=False,
                proxy=proxy,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=step, sock_read=step),
            ) as response:
                status, response_headers = response.status, response.headers
                await _drain_small_reply(response)
        except TimeoutError:
            raise DeliveryError(
                Reason.TIMEOUT, retryable=True, message=f"POST {destination}: timed out"
            ) from None
        except aiohttp.ClientError as exc:
            raise _client_error(exc, destination) from None
        error = classify_http_status(status, response_headers)
        if error is not None:
            raise error.about(f"POST {destination}")


def _environment_proxy(scheme: str, host: str) -> str | None:
    if urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(scheme)


async def _drain_small_reply(response: aiohttp.ClientResponse) -> None:
    """Read up to MAX_DRAINED_REPLY_BYTES of the reply for up to DRAIN_SECONDS; past either, or on an error,
    the connection is dropped.

    A small reply is read to its end so the connection goes back to the pool instead of costing a new TCP (and
    TLS) handshake per webhook; a huge one is never buffered. The status is already known, so a failure here
    must not turn a delivered webhook into a retry.
    """
    received = 0
    try:
        async with asyncio.timeout(DRAIN_SECONDS):  # a reply that trickles in must not outlast the send
            while chunk := await response.content.readany():
                received += len(chunk)
                if received > MAX_DRAINED_REPLY_BYTES:
                    break
            else:
                return
    except (aiohttp.ClientError, TimeoutError):
        pass
    response.close()


def _client_error(error: aiohttp.ClientError, destination: str) -> DeliveryError:
    if isinstance(error, aiohttp.ClientConnectorError) and isinstance(error.os_error, NonPublicAddress):
        return _forbidden(destination)
    if isinstance(error, aiohttp.InvalidURL):  # e.g. a numeric host that is no canonical IPv4: never callable
        return DeliveryError(
            Reason.CLIENT_ERROR, retryable=False, message=f"POST {destination}: the URL cannot be called"
        )
    return DeliveryError(
        Reason.CONNECTION, retryable=True, message=f"POST {destination}: {type(error).__name__}"
    )


class _PublicAddressResolver(AbstractResolver):
    """aiohttp's default resolver, keeping only a name's public addresses; NonPublicAddress when none is.

    Dropping the others here, rather than refusing their sockets one by one, keeps the outcome independent of
    DNS order: aiohttp reports only the last address's error, so a host with a public address that is down
    and a private one would otherwise fail now as refused (permanent), now as unreachable (retried)."""

    def __init__(self) -> None:
        self._resolver = aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        resolved = await self._resolver.resolve(host, port, family)
        public = [result for result in resolved if is_public_address(result["host"])]
        if not public:
            raise NonPublicAddress
        return public

    async def close(self) -> None:
        await self._resolver.close()


# IPv6 prefixes that carry an IPv4 address in their last 32 bits for a translator (RFC 6052, RFC 8215).
NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def is_public_address(text: str) -> bool:
    """Global, and so is any IPv4 address it embeds: an IPv6 form of 10.0.0.1 (mapped, 6to4, Teredo, NAT64)
    would reach the internal address through a translator, though Python calls some of them global."""
    address = ipaddress.ip_address(text)
    if not address.is_global:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return True
    embedded = [address.ipv4_mapped, address.sixtofour, *(address.teredo or ())]
    if any(address in prefix for prefix in NAT64_PREFIXES):
        embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return all(ipv4.is_global for ipv4 in embedded if ipv4 is not None)


def _public_address_socket(addr_info: aiohttp.AddrInfoType) -> socket.socket:
    """The socket for one address aiohttp is about to connect to, refused unless the address is public."""
    family, type_, proto, _, sockaddr = addr_info
    if not is_public_address(sockaddr[0]):
        raise NonPublicAddress
    return socket.socket(family=family, type=type_, proto=proto)


def _forbidden(destination: str) -> DeliveryError:
    return DeliveryError(
        Reason.FORBIDDEN_DESTINATION,
        retryable=False,
        message=f"{destination}: resolves to a non-public address (allow_private_network is off)",
    )


async def refuse_private_destination(url: str, destination: str) -> None:
    """Before a send through a proxy: raise unless every address the host resolves to here is public.

    `destination` is the redacted URL errors may show.
    """
    parts = urlsplit(url)
    if parts.hostname is None:
        raise DeliveryError(Reason.CLIENT_ERROR, retryable=False, message=f"{destination}: no host in URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except OSError:
        raise DeliveryError(
            Reason.CONNECTION, retryable=True, message=f"{destination}: host does not resolve"
        ) from None
    if not all(is_public_address(sockaddr[0]) for *_, sockaddr in infos):
        raise _forbidden(destination)


def _request(notification: Notification, receiver: WebhookReceiver) -> tuple[bytes, dict[str, str]]:
    headers = {"content-type": "application/json"}
    if receiver.webhook.format == "slack":
        return _json_bytes(slack_body(notification)), headers
    body = _json_bytes(standard_body(notification))
    secrets = [secret.get_secret_value() for secret in receiver.webhook.secrets]
    return body, headers | signature_headers(notification.webhook_id, body, secrets, datetime.now(UTC))


def standard_body(notification: Notification) -> dict[str, Any]:
    """The Standard Webhooks payload shape: type, timestamp (when the event occurred), data.

    Nothing in it changes between attempts, so a retry carries the same body as the first try.
    """
    event = notification.event.as_json()
    return {
        "type": f"alert.{notification.kind.value}",
        "timestamp": event["occurred_at"] or event["received_at"],
        "data": {
            "delivery_id": notification.delivery_id,
            "receiver": notification.receiver.name,
            "kind": notification.kind.value,
            "event": event,
            "resolves": list(notification.resolves),
        },
    }


def slack_body(notification: Notification) -> dict[str, Any]:
    text = render_within("slack_text.txt.j2", notification, SLACK_SECTION_MAX_CHARS)
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


def signature_headers(webhook_id: str, body: bytes, secrets: list[str], now: datetime) -> dict[str, str]:
    """webhook-id/-timestamp/-signature; one `v1,` signature per secret so receivers can rotate keys.

    The id stays the same across retries (receivers deduplicate on it); the timestamp is the attempt's own,
    so a late retry still passes the receivers' 5-minute tolerance.
    """
    headers = {"webhook-id": webhook_id, "webhook-timestamp": str(int(now.timestamp()))}
    if secrets:
        text = body.decode()
        headers["webhook-signature"] = " ".join(
            Webhook(secret).sign(msg_id=webhook_id, timestamp=now, data=text) for secret in secrets
        )
    return headers


def _url(receiver: WebhookReceiver) -> str:
    if receiver.webhook.url is None:  # the config refuses this; narrowed here for the type checker
        raise DeliveryError(Reason.CLIENT_ERROR, retryable=False, message=f"{receiver.name}: no URL")
    return receiver.webhook.url.get_secret_value()


def _json_bytes(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
