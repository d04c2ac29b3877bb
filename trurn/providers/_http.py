"""HTTP plumbing shared by the provider adapters: errors from responses, Retry-After, URLs.

Everything here is pure and runs only when something went wrong (or once per request),
never per streamed chunk. Messages carry the provider's own words, never a secret: any
secret passed in is masked wherever it appears, and URLs are shown without their query
string or credentials.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from datetime import timezone
from typing import Any

import httpx
import msgspec

from .._errors import (
    AuthenticationError,
    BadRequestError,
    ContextOverflowError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    ProviderError,
    ProviderTimeout,
    RateLimitError,
    ServerError,
)

__all__ = [
    "WireError",
    "collect_secrets",
    "describe_url",
    "error_from_payload",
    "error_from_response",
    "excerpt",
    "is_context_overflow",
    "mask",
    "parse_base_url",
    "parse_retry_after",
]

# Error codes and phrases providers use when the prompt does not fit the context window
# (OpenAI and Groq, vLLM, Mistral, llama.cpp, Anthropic, Gemini's compatible endpoint).
_OVERFLOW_CODES = frozenset({"context_length_exceeded", "exceed_context_size_error"})
_OVERFLOW_PHRASES = (
    "maximum context length",
    "context window",
    "context length",
    "context size",
    "too many tokens",
    "prompt is too long",
    # Anthropic: "input length and `max_tokens` exceed context limit: 178959 + 64000 > 200000"
    "exceed context limit",
    "exceeds the maximum number of tokens",
)
# What an error's ``type``/``code`` says when no HTTP status comes with it (in-stream errors).
_KIND_BY_CODE: dict[str, type[ProviderError]] = {
    "invalid_request_error": BadRequestError,
    "authentication_error": AuthenticationError,
    "permission_error": PermissionDeniedError,
    "not_found_error": NotFoundError,
    "rate_limit_error": RateLimitError,
    "rate_limit_exceeded": RateLimitError,
    "overloaded_error": OverloadedError,
    "server_error": ServerError,
    "api_error": ServerError,
}
_EXCERPT_CHARS = 200
# Header and query parameter names whose values are masked in errors ("sig": Azure SAS).
_SECRET_HINTS = ("auth", "key", "token", "secret", "cookie", "sig", "password")
# The last word of a secret header's value ("Bearer <token>") is masked on its own when it
# is at least this long: long enough for a credential, too long for a scheme name or a word.
_MIN_CREDENTIAL = 8
# Retry-After's delay-seconds is digits only (RFC 9110); a fraction is tolerated.
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_SPACES = re.compile(r"\s+")


class WireError(msgspec.Struct):
    """An error object as providers send it, in an error body or inside a stream."""

    message: str | None = None
    type: str | None = None
    code: str | int | None = None
    status_code: int | None = None


class _ErrorEnvelope(msgspec.Struct):
    # OpenAI and most compatible servers: {"error": {...}}; Ollama: {"error": "..."};
    # vLLM and others: a flat {"message": ..., "type": ..., "code": ...}; FastAPI: {"detail"}.
    error: WireError | str | None = None
    message: str | None = None
    type: str | None = None
    code: str | int | None = None
    detail: Any = None


_envelope_decoder = msgspec.json.Decoder(_ErrorEnvelope)


def excerpt(body: bytes, limit: int = _EXCERPT_CHARS, *, secrets: Iterable[str] = ()) -> str:
    """A short, single-line view of ``body`` for an error message.

    For an HTML page this is its ``<title>``; otherwise the first ``limit`` characters with
    runs of whitespace collapsed. ``secrets`` are masked before the body is cut, so no
    secret is shown, not even the part of one that a cut would leave.
    """
    for secret in secrets:
        if secret:
            body = body.replace(secret.encode(), b"[redacted]")
    if not body.strip():
        return "(empty body)"
    title = _TITLE.search(body[:65536])
    if title is not None and title.group(1).strip():
        body = title.group(1)
    text = _SPACES.sub(" ", body[: limit * 4].decode("utf-8", "replace")).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_url(url: httpx.URL | str) -> str:
    """``url`` without query string or credentials, fit for an error message."""
    url = httpx.URL(url)
    return str(url.copy_with(query=None, fragment=None, username=None, password=None))


def parse_base_url(base_url: str, owner: str) -> httpx.URL:
    """``base_url`` as an ``httpx.URL``; a :class:`ValueError` that names ``owner`` (the
    provider class) unless it is an http(s) URL with a host."""
    try:
        base = httpx.URL(base_url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"{owner} base_url is not a URL: {exc}") from exc
    if base.scheme not in ("http", "https") or not base.host:
        raise ValueError(f"{owner} base_url must be an http(s) URL, got {describe_url(base)!r}")
    return base


def parse_retry_after(headers: httpx.Headers, *, now: float | None = None) -> float | None:
    """The server's retry hint in seconds, or ``None`` when it gave none (or nonsense).

    Reads ``retry-after-ms`` (OpenAI) first, then ``Retry-After`` as seconds (digits, with
    an optional fraction) or as an HTTP date in any of RFC 9110's three forms; a date is
    taken relative to ``now`` (default: the wall clock), and a date in the past means
    "now" (0.0).
    """
    millis = headers.get("retry-after-ms")
    if millis is not None:
        seconds = _non_negative(millis)
        if seconds is not None:
            return seconds / 1000.0
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _non_negative(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # HTTP dates are GMT (RFC 9110), so a zone-less asctime date or "-0000" is too.
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _non_negative(value: str) -> float | None:
    # Not float() alone, which also reads "1_0", "1e3", "inf" and "-3".
    value = value.strip()
    if not _SECONDS.fullmatch(value):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def is_context_overflow(message: str, code: str | int | None = None) -> bool:
    """Whether an error says that the prompt does not fit the model's context window."""
    if isinstance(code, str) and code in _OVERFLOW_CODES:
        return True
    lowered = message.lower()
    return any(phrase in lowered for phrase in _OVERFLOW_PHRASES)


def mask(message: str, secrets: Iterable[str]) -> str:
    """``message`` with every secret (API key, auth header value) replaced."""
    for secret in secrets:
        if secret:
            message = message.replace(secret, "[redacted]")
    return message


def collect_secrets(
    api_key: str | None, headers: Mapping[str, str] | None, url: httpx.URL | None = None
) -> tuple[str, ...]:
    """What :func:`mask` hides in a provider's errors, longest first.

    ``api_key``; the values of ``headers`` and of ``url``'s query parameters whose names
    hint at a secret (``auth``, ``key``, ``token``, ``secret``, ``cookie``, ``sig``,
    ``password``); the credential after an auth scheme (the last word of such a header's
    value, ``"Bearer <token>"``, when it is long enough to be one), since a server may echo
    it alone; and each query value as it went on the wire (percent-encoded) and in the
    other encodings a server may echo it in.
    """
    secrets = [api_key] if api_key else []
    for name, value in (headers or {}).items():
        if value and _hints_at_secret(name):
            secrets.append(value)
            words = value.split()
            if words and len(words[-1]) >= _MIN_CREDENTIAL:
                secrets.append(words[-1])
    if url is not None:
        for pair in url.query.decode("ascii").split("&"):
            raw_name, _, raw = pair.partition("=")
            if not raw or not _hints_at_secret(urllib.parse.unquote_plus(raw_name)):
                continue
            value = urllib.parse.unquote_plus(raw)
            secrets += (raw, value)
            for safe in ("", "/"):  # "/" is what urllib and many servers leave as it is
                secrets += (
                    urllib.parse.quote(value, safe=safe),
                    urllib.parse.quote_plus(value, safe=safe),
                )
    # Longest first: masking a secret that holds a shorter one must not leave pieces of it.
    return tuple(sorted(dict.fromkeys(secrets), key=len, reverse=True))


def _hints_at_secret(name: str) -> bool:
    lowered = name.lower()
    return any(hint in lowered for hint in _SECRET_HINTS)


def _parse_error_body(body: bytes) -> tuple[str | None, str | int | None, str | None]:
    """(message, code, type) from a JSON error body; message is None when there is none."""
    try:
        envelope = _envelope_decoder.decode(body)
    except msgspec.DecodeError:
        return None, None, None
    if isinstance(envelope.error, WireError):
        error = envelope.error
        return error.message, error.code, error.type
    if isinstance(envelope.error, str):
        return envelope.error, envelope.code, envelope.type
    message = envelope.message
    if message is None and isinstance(envelope.detail, str):
        message = envelope.detail
    return message, envelope.code, envelope.type


def _class_for_status(
    status: int | None, message: str, code: str | int | None, kind: str | None
) -> type[ProviderError]:
    if status in (400, 413, 422) or (status is None and kind == "invalid_request_error"):
        return ContextOverflowError if is_context_overflow(message, code) else BadRequestError
    if status is None and is_context_overflow(message, code):
        return ContextOverflowError
    if kind == "overloaded_error" or code == "overloaded_error" or status == 529:
        return OverloadedError
    if status is None:
        for hint in (kind, code):
            if isinstance(hint, str) and hint in _KIND_BY_CODE:
                return _KIND_BY_CODE[hint]
        return ProviderError
    if status == 401:
        return AuthenticationError
    if status == 403:
        return PermissionDeniedError
    if status == 404:
        return NotFoundError
    if status == 408:
        return ProviderTimeout
    if status == 429:
        return RateLimitError
    if status >= 500:
        return ServerError
    return ProviderError


def error_from_response(
    response: httpx.Response,
    body: bytes,
    *,
    provider: str,
    secrets: Iterable[str] = (),
    now: float | None = None,
) -> ProviderError:
    """The typed exception for a non-2xx ``response`` whose (possibly cut) body is ``body``.

    The message names the status and the URL (without query string) and carries the
    provider's own error message, or an excerpt of the body when it has none (an HTML
    error page, say). ``secrets`` are masked wherever they appear.
    """
    secrets = tuple(secrets)  # used twice
    status = response.status_code
    message, code, kind = _parse_error_body(body)
    if not message:
        message = excerpt(body, secrets=secrets)
    cls = _class_for_status(status, message, code, kind)
    text = mask(
        f"HTTP {status} {response.reason_phrase} from {describe_url(response.request.url)}: "
        f"{message}",
        secrets,
    )
    error = cls(
        text,
        status_code=status,
        provider=provider,
        retry_after=parse_retry_after(response.headers, now=now),
    )
    if cls is RateLimitError and "insufficient_quota" in (code, kind):
        # OpenAI's "you have run out of credits" comes as a 429 too; waiting won't help.
        error.retryable = False
    return error


def error_from_payload(
    error: WireError | str,
    *,
    provider: str,
    secrets: Iterable[str] = (),
) -> ProviderError:
    """The typed exception for an error object a provider sent inside a 200 stream.

    ``error`` is the decoded object (``message``, and when present ``status_code``, an
    integer ``code`` used as a status, a string ``code`` or ``type``) or a plain string.
    The exception's ``status_code`` stays ``None``: the HTTP status was 200.
    """
    if isinstance(error, str):
        message: str = error
        code: str | int | None = None
        kind: str | None = None
        status: int | None = None
    else:
        message = error.message or "the provider reported an error"
        code = error.code
        kind = error.type
        status = error.status_code
        if status is None and isinstance(code, int):
            status = code
    cls = _class_for_status(status, message, code, kind)
    detail = (
        f"{message} (code {code})" if isinstance(code, str) and code not in message else message
    )
    return cls(mask(f"error in stream: {detail}", secrets), provider=provider)
