"""Cassettes: record a provider's HTTP exchanges to a file, replay them with no network.

The seam is httpx's transport, so cassettes work for every provider: the provider (and
its SSE decoder, error mapping and retries) runs for real in both directions, only the
bytes come from a file instead of a socket.

* :class:`RecordingTransport` forwards each request to a real transport and appends one
  :class:`RecordedExchange` per request to the cassette when its response ends.
* :class:`ReplayTransport` serves a loaded :class:`Cassette`'s exchanges in order, each
  body in the pieces it was read in, and raises :class:`CassetteMismatch` when the code
  under test sends something else.
* :func:`open_cassette` gives an ``httpx.AsyncClient`` doing either, to pass to a
  provider's ``client=``; in ``"auto"`` mode it replays the file if it exists and
  records it otherwise.

The file is JSON Lines: a header line ``{"trurn_cassette":1}``, then one exchange per
line, written whole, so a recording that crashes leaves the earlier exchanges readable.
What is kept of a request: the method, the path and query string, and the body; never
its headers (they carry the API key). Query values and JSON body fields whose names
look like secrets (``key``, ``api_key``, ``token``, ``password``...) are replaced by
``[redacted]``, and so is every occurrence of a credential the request carried in a
header (``Authorization``, ``x-api-key``, ``api-key``...), wherever it appears: path,
request body, response headers and body. Credentials shorter than 8 characters are not
searched for, as they would mangle ordinary text (``api_key="test"``).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, Literal

import httpx
import msgspec
import trio

__all__ = [
    "Cassette",
    "CassetteFormatError",
    "CassetteMismatch",
    "RecordedError",
    "RecordedExchange",
    "RecordingTransport",
    "ReplayTransport",
    "load_cassette",
    "open_cassette",
]

StrPath = str | os.PathLike[str]
End = Literal["complete", "closed", "error"]

_VERSION = 1
_REDACTED = "[redacted]"
# The response headers providers read (content type, retry hints) and the request ids
# people quote in bug reports. Others (cookies, rate-limit counters) are left out.
_KEPT_HEADERS = (
    "content-type",
    "content-encoding",
    "retry-after",
    "retry-after-ms",
    "x-request-id",
    "request-id",
)
_CREDENTIAL_HEADER_HINTS = ("auth", "key", "token", "secret", "cookie")
_MIN_SECRET_LENGTH = 8
_SECRET_FIELDS = frozenset(
    {
        "key",
        "apikey",
        "token",
        "access_token",
        "auth_token",
        "refresh_token",
        "id_token",
        "session_token",
        "secret",
        "password",
        "authorization",
        "sig",  # Azure SAS query strings
    }
)
_SECRET_FIELD_ENDINGS = ("api_key", "_secret", "_password")
# What a client made by open_cassette waits for: as long as the providers' own clients.
_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
_SHOWN_CHARS = 60


# --- errors ------------------------------------------------------------------------------


class CassetteMismatch(AssertionError):
    """The code under test sent a request the cassette did not record next, or more
    requests than it recorded.

    An :class:`AssertionError` rather than a :class:`~trurn.TrurnError`: it means the
    test failed (the code no longer does what it did when the cassette was recorded),
    not that a provider failed, so no retry policy and no ``except ProviderError`` or
    ``except TrurnError`` in the code under test takes it for one and carries on.
    """


class CassetteFormatError(ValueError):
    """A cassette file is not valid; the message names the file and the line."""


# --- the file format -----------------------------------------------------------------------


def _transport_error_class(name: str) -> type[httpx.TransportError] | None:
    cls = getattr(httpx, name, None)
    if isinstance(cls, type) and issubclass(cls, httpx.TransportError):
        return cls
    return None


class RecordedError(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A transport failure seen while recording: ``type`` names an
    ``httpx.TransportError`` subclass (``ReadError``, ``ConnectError``...), ``message``
    is its text with secrets masked. Replay raises the same class with the same text."""

    type: str
    message: str = ""

    def __post_init__(self) -> None:
        if _transport_error_class(self.type) is None:
            raise ValueError(
                f"error type {self.type!r} is not an httpx transport error "
                "(ReadError, RemoteProtocolError, ConnectError, ReadTimeout...)"
            )


class RecordedExchange(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    """One request and what came back, as one line of a cassette.

    ``path`` is the request's path and query string (secret values masked);
    ``request_body`` its body as JSON (secret fields masked), or as text when it is not
    JSON, or ``None`` when empty. ``status`` is ``None`` when no response came at all
    (``error`` says why). ``headers`` are the response headers that matter. ``body`` is
    the raw response body (still compressed if the server compressed it): UTF-8 text,
    or base64 when ``body_encoding`` says so. ``pieces`` are the sizes in bytes of the
    reads it arrived in (replay serves the same pieces; leave it out to serve the body
    in one piece). ``end`` says how the body ended: ``"complete"``; ``"closed"`` by the
    client before its end (a cancelled turn), so the body is what had arrived; or
    ``"error"``, a transport failure described by ``error``.
    """

    method: str
    path: str
    request_body: Any = None
    status: int | None = None
    headers: dict[str, str] = {}
    body: str = ""
    body_encoding: Literal["utf-8", "base64"] = "utf-8"
    pieces: list[int] = []
    end: End = "complete"
    error: RecordedError | None = None

    def __post_init__(self) -> None:
        if not self.method:
            raise ValueError("method must not be empty")
        if not self.path.startswith("/"):
            raise ValueError(f"path must start with '/', got {self.path!r}")
        if (self.end == "error") != (self.error is not None):
            raise ValueError('"error" must be given exactly when "end" is "error"')
        if self.status is None:
            if self.error is None or self.body or self.pieces:
                raise ValueError(
                    'an exchange without "status" (no response) needs an "error" and no body'
                )
            return
        if not 100 <= self.status <= 599:
            raise ValueError(f"status must be in 100..599, got {self.status}")
        size = len(self.body_bytes)
        if self.pieces and (min(self.pieces) < 0 or sum(self.pieces) != size):
            raise ValueError(
                f"pieces {_show(self.pieces)} do not add up to the body's {size} bytes "
                '(remove "pieces" to serve the body in one piece)'
            )

    @property
    def body_bytes(self) -> bytes:
        """The response body as it was read (raises ``ValueError`` for bad base64)."""
        if self.body_encoding == "utf-8":
            return self.body.encode()
        try:
            return base64.b64decode(self.body, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"body is not valid base64: {exc}") from None

    def body_pieces(self) -> list[bytes]:
        """The body split into the pieces it was read in."""
        body = self.body_bytes
        if not self.pieces:
            return [body] if body else []
        pieces = []
        start = 0
        for size in self.pieces:
            pieces.append(body[start : start + size])
            start += size
        return pieces


class Cassette(msgspec.Struct, frozen=True):
    """Recorded exchanges, in the order replay serves them; ``name`` (the file) is used
    in error messages."""

    exchanges: list[RecordedExchange]
    name: str = "<cassette>"


class _Header(msgspec.Struct, frozen=True):
    trurn_cassette: int


_header_decoder = msgspec.json.Decoder(_Header)
_exchange_decoder = msgspec.json.Decoder(RecordedExchange)
_encoder = msgspec.json.Encoder()
_HEADER_LINE = _encoder.encode(_Header(_VERSION)) + b"\n"


def parse_cassette(data: bytes, *, name: str) -> Cassette:
    """The cassette in ``data``; :class:`CassetteFormatError` names the first bad line.

    Blank lines are skipped. A line torn by a crash while it was written is an error
    too: delete it, or record again.
    """
    exchanges: list[RecordedExchange] = []
    header_seen = False
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        if not header_seen:
            try:
                version = _header_decoder.decode(line).trurn_cassette
            except msgspec.DecodeError as exc:
                raise CassetteFormatError(
                    f"{name}, line {number}: not a trurn cassette: the first line must be "
                    f'{{"trurn_cassette": {_VERSION}}} ({exc})'
                ) from exc
            if version != _VERSION:
                raise CassetteFormatError(
                    f"{name}, line {number}: cassette version {version} is not supported "
                    f"(this trurn reads version {_VERSION})"
                )
            header_seen = True
            continue
        try:
            exchanges.append(_exchange_decoder.decode(line))
        except msgspec.DecodeError as exc:
            raise CassetteFormatError(
                f"{name}, line {number}: not a recorded exchange: {exc}"
            ) from exc
    if not header_seen:
        raise CassetteFormatError(f"{name} is empty: it is not a trurn cassette")
    return Cassette(exchanges, name)


async def load_cassette(path: StrPath) -> Cassette:
    """Read and validate the cassette at ``path`` (a checkpoint: the file is read in a
    worker thread).

    Raises :class:`CassetteFormatError` naming the file and the bad line, and
    :class:`FileNotFoundError` when there is no file.
    """
    name = os.fspath(path)
    try:
        data = await trio.Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            exc.errno, f"no cassette at {name}: record one first (mode 'record' or 'auto')", name
        ) from None
    return parse_cassette(data, name=name)


# --- what is kept of a request, with secrets masked ---------------------------------------


def _is_secret_name(name: str) -> bool:
    normal = name.lower().replace("-", "_")
    return normal in _SECRET_FIELDS or normal.endswith(_SECRET_FIELD_ENDINGS)


def _credentials(headers: httpx.Headers) -> tuple[str, ...]:
    """The credential values in ``headers``, longest first, to mask wherever they appear."""
    found: set[str] = set()
    for name, value in headers.items():
        if any(hint in name.lower() for hint in _CREDENTIAL_HEADER_HINTS):
            found.add(value.strip())
            _scheme, _, credential = value.partition(" ")  # "Bearer sk-...", "Basic ..."
            found.add(credential.strip())
    return tuple(sorted((s for s in found if len(s) >= _MIN_SECRET_LENGTH), key=len, reverse=True))


def _mask_text(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, _REDACTED)
    return text


def _mask_bytes(data: bytes, secrets: Iterable[str]) -> bytes:
    for secret in secrets:
        data = data.replace(secret.encode(), _REDACTED.encode())
    return data


def _mask_fields(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: _REDACTED if isinstance(item, str) and _is_secret_name(key) else _mask_fields(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_mask_fields(item) for item in value]
    return value


def _target(url: httpx.URL, secrets: Iterable[str]) -> str:
    """Path and query string, secret query values masked."""
    items = url.params.multi_items()
    if not items:
        return _mask_text(url.path, secrets)
    query = "&".join(
        f"{name}={_REDACTED if _is_secret_name(name) else value}" for name, value in items
    )
    return _mask_text(f"{url.path}?{query}", secrets)


def _request_body(content: bytes, secrets: Iterable[str]) -> Any:
    if not content:
        return None
    masked = _mask_bytes(content, secrets)
    try:
        return _mask_fields(msgspec.json.decode(masked))
    except msgspec.DecodeError:
        return masked.decode("utf-8", "replace")


def _describe(request: httpx.Request) -> tuple[str, str, Any, tuple[str, ...]]:
    """(method, path, body, credentials) of a request whose body has been read."""
    secrets = _credentials(request.headers)
    return (
        request.method,
        _target(request.url, secrets),
        _request_body(request.content, secrets),
        secrets,
    )


def _recorded_error(exc: httpx.TransportError, secrets: Iterable[str]) -> RecordedError:
    # The nearest public httpx class, so that replay can raise it again.
    name = next(
        cls.__name__ for cls in type(exc).__mro__ if _transport_error_class(cls.__name__) is cls
    )
    return RecordedError(name, _mask_text(str(exc), secrets))


def _encode_body(body: bytes) -> tuple[str, Literal["utf-8", "base64"]]:
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), "base64"


def _response_fields(
    response: httpx.Response, pieces: list[bytes], secrets: tuple[str, ...]
) -> dict[str, Any]:
    body = b"".join(pieces)
    masked = _mask_bytes(body, secrets)
    # A masked body no longer has the pieces' sizes: it is replayed in one piece.
    sizes = [len(piece) for piece in pieces] if masked == body else [len(masked)]
    text, encoding = _encode_body(masked)
    headers = {
        name: _mask_text(response.headers[name], secrets)
        for name in _KEPT_HEADERS
        if name in response.headers
    }
    return {
        "status": response.status_code,
        "headers": headers,
        "body": text,
        "body_encoding": encoding,
        "pieces": sizes,
    }


# --- recording ------------------------------------------------------------------------------


class RecordingTransport(httpx.AsyncBaseTransport):
    """Forwards every request to ``inner`` and appends each exchange to the cassette at
    ``path``.

    The file is created (replacing any file there, and its missing parent directories)
    when the first exchange is written. An exchange is written once its response body
    has been read to the end, has failed, or was closed before its end (then
    ``end="closed"`` and the body is what had arrived); a response that is never closed
    is never written. A request that fails before any response (connection refused, a
    timeout) is written too, with no status. Exchanges are written in the order their
    responses end, so a cassette suits code that makes one request at a time, as a turn
    does. Writing is shielded from cancellation, so a cancelled turn still leaves every
    line whole. Closing the transport closes ``inner``.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, path: StrPath) -> None:
        self._inner = inner
        self._path = trio.Path(path)
        self._lock = trio.Lock()
        self._begun = False
        self.recorded = 0
        """How many exchanges have been written."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the inner transport (a checkpoint).

        The response comes back as the inner transport gave it, its body recorded as it
        is read. A transport error is recorded, then raised as it is.
        """
        await request.aread()
        method, path, body, secrets = _describe(request)
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.TransportError as exc:
            failure = _recorded_error(exc, secrets)
            await self._append(
                RecordedExchange(
                    method=method, path=path, request_body=body, end="error", error=failure
                )
            )
            raise
        stream = response.stream
        if not isinstance(stream, httpx.AsyncByteStream):
            await response.aclose()
            raise TypeError("RecordingTransport's inner transport must return an async stream")

        async def finish(pieces: list[bytes], end: End, error: httpx.TransportError | None) -> None:
            await self._append(
                RecordedExchange(
                    method=method,
                    path=path,
                    request_body=body,
                    end=end,
                    error=None if error is None else _recorded_error(error, secrets),
                    **_response_fields(response, pieces, secrets),
                )
            )

        # A new response, rather than the inner one with its stream replaced: a response
        # made from bytes (MockTransport's) has read them already and would not read ours.
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_RecordingStream(stream, finish),
            request=request,
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        """Close the inner transport."""
        await self._inner.aclose()

    async def _begin(self) -> None:
        """Create the cassette file with its header line (shielded, a checkpoint)."""
        with trio.CancelScope(shield=True):
            async with self._lock:
                await self._begin_locked()

    async def _begin_locked(self) -> None:
        if self._begun:
            return
        await self._path.parent.mkdir(parents=True, exist_ok=True)
        async with await trio.open_file(self._path, "wb") as file:
            await file.write(_HEADER_LINE)
        self._begun = True

    async def _append(self, exchange: RecordedExchange) -> None:
        line = _encoder.encode(exchange) + b"\n"
        # Shielded: a turn cancelled while its response closes still writes its line,
        # whole, and one writer at a time keeps concurrent exchanges on separate lines.
        with trio.CancelScope(shield=True):
            async with self._lock:
                await self._begin_locked()
                async with await trio.open_file(self._path, "ab") as file:
                    await file.write(line)
        self.recorded += 1


class _RecordingStream(httpx.AsyncByteStream):
    """The inner response body, passed through piece by piece and kept for the record."""

    def __init__(
        self,
        inner: httpx.AsyncByteStream,
        finish: Callable[[list[bytes], End, httpx.TransportError | None], Awaitable[None]],
    ) -> None:
        self._inner = inner
        self._iterator: AsyncIterator[bytes] | None = None
        self._pieces: list[bytes] = []
        self._finish = finish
        self._finished = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        # A plain iterator, not an async generator: one dropped half-way would be
        # reported by Trio's finaliser as a ResourceWarning.
        self._iterator = self._inner.__aiter__()
        return self

    async def __anext__(self) -> bytes:
        if self._iterator is None:
            raise RuntimeError("the response body was closed")
        try:
            piece = await self._iterator.__anext__()
        except StopAsyncIteration:
            await self._end("complete", None)
            raise
        except httpx.TransportError as exc:
            await self._end("error", exc)
            raise
        self._pieces.append(piece)
        return piece

    async def aclose(self) -> None:
        iterator, self._iterator = self._iterator, None
        try:
            close = getattr(iterator, "aclose", None)
            try:
                if close is not None:
                    await close()
            finally:
                await self._inner.aclose()
        finally:
            await self._end("closed", None)

    async def _end(self, end: End, error: httpx.TransportError | None) -> None:
        if not self._finished:
            self._finished = True
            await self._finish(self._pieces, end, error)


# --- replay --------------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"


def _first_difference(recorded: Any, sent: Any, where: str) -> str | None:
    """Where two JSON values first differ, and how; ``None`` when they are equal."""
    if isinstance(recorded, dict) and isinstance(sent, dict):
        for key, value in recorded.items():
            if key not in sent:
                return f"{where}.{key}: recorded {_show(value)}, sent nothing"
            difference = _first_difference(value, sent[key], f"{where}.{key}")
            if difference is not None:
                return difference
        for key, value in sent.items():
            if key not in recorded:
                return f"{where}.{key}: recorded nothing, sent {_show(value)}"
        return None
    if isinstance(recorded, list) and isinstance(sent, list):
        for index, (old, new) in enumerate(zip(recorded, sent, strict=False)):
            difference = _first_difference(old, new, f"{where}[{index}]")
            if difference is not None:
                return difference
        if len(recorded) != len(sent):
            return f"{where}: recorded {len(recorded)} items, sent {len(sent)}"
        return None
    if type(recorded) is type(sent) and recorded == sent:
        return None
    return f"{where}: recorded {_show(recorded)}, sent {_show(sent)}"


def _mismatch(
    recorded: RecordedExchange, method: str, path: str, body: Any, *, match_body: bool
) -> str | None:
    if (method, path) != (recorded.method, recorded.path):
        return f"the cassette has {recorded.method} {recorded.path} there"
    if match_body:
        difference = _first_difference(recorded.request_body, body, "$")
        if difference is not None:
            return f"the body differs at {difference}"
    return None


class ReplayTransport(httpx.AsyncBaseTransport):
    """Serves ``cassette``'s exchanges in order, with no network.

    Each request must match the next recorded one: same method, path and query string
    (secret values masked alike) and, with ``match_body`` (the default), the same JSON
    body; otherwise :class:`CassetteMismatch` says what differed, and the same recorded
    exchange stays next. A request past the last exchange raises it too. Each body is
    served in its recorded pieces, one checkpoint per piece, so the provider decodes it
    as it would a network stream. A recorded transport failure is raised again (an
    ``httpx`` error, which the provider maps as usual); so is the end of a body that was
    cut while recording (``end="closed"``): ``httpx.ReadError`` saying the recording
    ends there.

    Load the cassette with :func:`load_cassette`, or use :func:`open_cassette`.
    ``played`` counts the exchanges served so far.
    """

    def __init__(self, cassette: Cassette, *, match_body: bool = True) -> None:
        if not isinstance(cassette, Cassette):
            raise TypeError(
                f"ReplayTransport takes a Cassette (from load_cassette), not "
                f"{type(cassette).__name__}"
            )
        self.cassette = cassette
        self.match_body = match_body
        self.played = 0

    @property
    def remaining(self) -> int:
        """How many recorded exchanges have not been served yet."""
        return len(self.cassette.exchanges) - self.played

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """The next recorded response, if ``request`` matches it (a checkpoint)."""
        await trio.lowlevel.checkpoint()
        await request.aread()
        method, path, body, _secrets = _describe(request)
        number = self.played + 1
        exchanges = self.cassette.exchanges
        name = self.cassette.name
        if self.played >= len(exchanges):
            raise CassetteMismatch(
                f"request {number} ({method} {path}) was not recorded: {name} holds "
                f"{len(exchanges)} exchange(s). Record the cassette again to include it."
            )
        recorded = exchanges[self.played]
        problem = _mismatch(recorded, method, path, body, match_body=self.match_body)
        if problem is not None:
            raise CassetteMismatch(
                f"request {number} ({method} {path}) does not match {name}: {problem}"
            )
        self.played += 1
        if recorded.status is None:
            raise _replayed_error(recorded, request)
        ending: Callable[[], Exception] | None = None
        if recorded.end != "complete":
            recording_name = f"{name}, exchange {number}"

            def ending() -> Exception:
                if recorded.end == "error":
                    return _replayed_error(recorded, request)
                return httpx.ReadError(
                    f"{recording_name}: the recording ends here, after "
                    f"{len(recorded.body_bytes)} bytes: the client closed the response "
                    "before its end while it was recorded",
                    request=request,
                )

        return httpx.Response(
            recorded.status,
            headers=list(recorded.headers.items()),
            stream=_ReplayStream(recorded.body_pieces(), ending),
            request=request,
        )

    async def aclose(self) -> None:
        """Nothing to close (a checkpoint)."""
        await trio.lowlevel.checkpoint()


def _replayed_error(recorded: RecordedExchange, request: httpx.Request) -> httpx.TransportError:
    assert recorded.error is not None  # checked when the exchange was decoded
    cls = _transport_error_class(recorded.error.type) or httpx.TransportError
    return cls(recorded.error.message, request=request)


class _ReplayStream(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes], ending: Callable[[], Exception] | None) -> None:
        self._pieces = pieces
        self._ending = ending
        self._position = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        # A checkpoint per piece, as a network read is: a turn can be cancelled mid-body.
        await trio.lowlevel.checkpoint()
        if self._position < len(self._pieces):
            piece = self._pieces[self._position]
            self._position += 1
            return piece
        if self._ending is not None:
            raise self._ending()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._position = len(self._pieces)


# --- the front door ------------------------------------------------------------------------


@asynccontextmanager
async def open_cassette(
    path: StrPath,
    mode: Literal["auto", "record", "replay"] = "auto",
    *,
    inner: httpx.AsyncBaseTransport | None = None,
    match_body: bool = True,
) -> AsyncIterator[httpx.AsyncClient]:
    """An ``httpx.AsyncClient`` that records to, or replays from, the cassette at ``path``.

    ``mode="record"`` sends requests through ``inner`` (default: a new
    ``httpx.AsyncHTTPTransport``) and records them, replacing any cassette there (the
    file is created on entering, even if no request follows). ``mode="replay"`` loads
    the cassette on entering (:class:`CassetteFormatError` for a bad file,
    :class:`FileNotFoundError` for none) and never touches the network; ``match_body``
    is :class:`ReplayTransport`'s. ``mode="auto"`` replays when the file exists and
    records otherwise, so a test records on its first run and replays after that;
    delete the file to record again. Pass the client to a provider::

        async with open_cassette("tests/cassettes/weather.jsonl") as client:
            provider = OpenAIChat("gpt-4o-mini", api_key=key, client=client)
            result = await trurn.run_turn(provider=provider, message="Weather in Oslo?")

    Leaving the block closes the client, and ``inner`` with it, whatever the mode.
    """
    if mode not in ("auto", "record", "replay"):
        raise ValueError(f"open_cassette mode must be 'auto', 'record' or 'replay', got {mode!r}")
    try:
        transport: httpx.AsyncBaseTransport
        if mode == "replay" or (mode == "auto" and await trio.Path(path).exists()):
            transport = ReplayTransport(await load_cassette(path), match_body=match_body)
        else:
            transport = RecordingTransport(inner or httpx.AsyncHTTPTransport(), path)
            inner = None  # the recorder owns it now, and closes it with the client
        async with httpx.AsyncClient(transport=transport, timeout=_TIMEOUT) as client:
            if isinstance(transport, RecordingTransport):
                await transport._begin()
            yield client
    finally:
        if inner is not None:
            await inner.aclose()
