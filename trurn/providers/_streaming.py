"""What the provider adapters share around the wire format: the streamed HTTP response and
the provider's endpoint, headers and HTTP client.

:class:`SSEResponseStream` owns one streaming call from sending the request to closing
the response: it maps httpx's failures to trurn's errors, reads a bounded error body,
drains the body after the reply's end, and holds an in-stream error back until the
chunks decoded before it were returned. A subclass only decodes bytes into chunks
(:meth:`~SSEResponseStream._decode`) and says whether a body may end where it did
(:meth:`~SSEResponseStream._missing_end`). :class:`HTTPProvider` is the provider's side:
the model name, the endpoint and headers of every call, and the caller's
``httpx.AsyncClient`` or one made on first use and closed with the provider.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncGenerator, Mapping
from typing import ClassVar, NamedTuple, NoReturn, TypeVar, cast

import httpx
import msgspec
import trio

from .._chunks import Chunk
from .._errors import (
    MalformedStreamError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
)
from .._sse import SSEDecoder
from ._http import (
    WireError,
    collect_secrets,
    describe_url,
    error_from_payload,
    error_from_response,
    excerpt,
    mask,
)

__all__ = ["DEFAULT_TIMEOUT", "HTTPCall", "HTTPProvider", "SSEResponseStream"]

DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
"""The timeout of a client a provider makes itself: a long read, for slow replies."""
# How much of an error body we read: enough for any JSON error, bounded for a huge page.
_ERROR_BODY_LIMIT = 65536
# After the reply's end, how much more body (bytes) and time (seconds) we read before closing.
_DRAIN_LIMIT = 65536
_DRAIN_GRACE = 1.0

_S = TypeVar("_S", bound="SSEResponseStream")
_P = TypeVar("_P", bound="HTTPProvider")


class HTTPCall(NamedTuple):
    """One request ready to send: the client to send it with, the URL as error messages
    show it (no query string), and the secrets they must mask."""

    client: httpx.AsyncClient
    request: httpx.Request
    url_text: str
    secrets: tuple[str, ...]

    def __repr__(self) -> str:
        # Not the NamedTuple default, which prints every field: the secrets, and the
        # request (whose headers hold the key) would end up in logs and tracebacks.
        method = self.request.method
        return f"HTTPCall({method} {self.url_text}, {len(self.secrets)} secrets masked)"


class SSEResponseStream(trio.abc.AsyncResource):
    """One streaming call: an async context manager that yields itself, an async
    iterator of chunk batches.

    Entering sends the request and checks the response; iterating reads it; leaving
    closes it. Errors the provider sends inside the stream are raised on the iteration
    *after* the batch holding the chunks decoded before them, so no partial output is
    lost.

    A subclass sets :attr:`_provider` (the name errors carry) and implements
    :meth:`_decode` and :meth:`_missing_end`; its state for the wire format lives next
    to the state here, which the subclass's ``_decode`` updates through ``_done``,
    ``_drain_pending`` and :meth:`_fail`.
    """

    _provider: ClassVar[str]

    def __init__(self, call: HTTPCall) -> None:
        self._client, self._request, self._url, self._secrets = call
        self._response: httpx.Response | None = None
        self._bytes: AsyncGenerator[bytes, None] | None = None
        self._sse = SSEDecoder()
        self._error: ProviderError | None = None
        # No more chunks will come: the end marker, an error, the end of the body, or closed.
        self._done = False
        # The end marker or an in-stream error arrived before the end of the body.
        self._drain_pending = False
        self._entered = False

    # --- what a wire format implements ---------------------------------------------------

    @abstractmethod
    def _decode(self, data: bytes) -> list[Chunk]:
        """The chunks completed by ``data``, the next network read (the hot path).

        At the reply's end marker it sets ``_done`` and ``_drain_pending``; for an error
        in the stream (sent by the provider, or a payload it cannot read) it calls
        :meth:`_fail` and returns the chunks decoded before the error.
        """
        raise NotImplementedError

    @abstractmethod
    def _missing_end(self) -> str | None:
        """``None`` if a body that ends now (before the end marker) holds a whole reply;
        otherwise what is missing, for the :class:`~trurn.MalformedStreamError`."""
        raise NotImplementedError

    # --- the lifecycle ---------------------------------------------------------------------

    @property
    def response(self) -> httpx.Response | None:
        """The HTTP response once the context is entered (status, headers such as the
        request id: ``x-request-id`` from OpenAI, ``request-id`` from Anthropic); closed
        when the context is left."""
        return self._response

    async def __aenter__(self: _S) -> _S:
        """Send the request and wait for the response headers (a checkpoint).

        Raises the typed :class:`~trurn.ProviderError` for a non-2xx status, a reply that
        is not an event stream, a timeout or a connection failure. If this raises or is
        cancelled, no response is left open.
        """
        if self._entered:
            raise RuntimeError("a provider stream can be entered only once")
        self._entered = True
        try:
            response = await self._client.send(self._request, stream=True)
        except (httpx.TransportError, httpx.DecodingError) as exc:  # decoding: a redirect's body
            raise self._http_error(exc, mid_reply=False) from exc
        try:
            if not response.is_success:
                body = await self._read_some(response)
                raise error_from_response(
                    response, body, provider=self._provider, secrets=self._secrets
                )
            content_type = response.headers.get("content-type")
            if content_type is not None and not _is_event_stream(content_type):
                body = await self._read_some(response)
                raise MalformedStreamError(
                    self._mask(
                        f"expected an event stream from {self._url} but got {content_type!r}: "
                        f"{self._excerpt(body)}"
                    ),
                    status_code=response.status_code,
                    provider=self._provider,
                )
        except BaseException:
            await response.aclose()
            raise
        self._response = response
        self._bytes = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())
        return self

    async def aclose(self) -> None:
        """Close the HTTP response, and end httpx's generators that read it (see
        :func:`_finish`); idempotent. Leaving the ``async with`` block calls it, safe on
        error and under cancellation; ending the generators raises no ``Cancelled``, so it
        cannot replace the exception that left the block."""
        self._done = True
        byte_iter, self._bytes = self._bytes, None
        try:
            if self._response is not None:
                try:
                    await self._response.aclose()  # idempotent in httpx
                except httpx.TransportError:
                    pass  # the connection is dead already; there is nothing left to close
        finally:
            if byte_iter is not None:
                await _finish(byte_iter)

    def __aiter__(self: _S) -> _S:
        return self

    async def __anext__(self) -> list[Chunk]:
        """The chunks of the next network read (a checkpoint); never an empty batch.

        Raises :class:`StopAsyncIteration` after the reply's end marker, or at the end of
        a body that holds a whole reply without one; :class:`~trurn.MalformedStreamError`
        for a payload the wire format does not allow, or a body that ended before the
        reply finished; :class:`~trurn.ProviderConnectionError` /
        :class:`~trurn.ProviderTimeout` when the connection fails mid-reply; the typed
        :class:`~trurn.ProviderError` for an error the provider sent in the stream.

        An error found in the middle of a read is raised by the *next* call, after the
        chunks decoded before it were returned. After the end marker (or such an error),
        the next call first reads what is left of the body, at most 64 KiB for at most a
        second, so the connection can be reused. Cancellation while waiting for bytes
        ends the iteration; leaving the ``async with`` block closes the response.
        """
        if self._done:
            await self._end()
        byte_iter = self._bytes
        if byte_iter is None:
            raise RuntimeError("iterate a provider stream inside its 'async with' block")
        while True:
            try:
                data = await byte_iter.__anext__()
            except StopAsyncIteration:
                self._done = True
                missing = self._missing_end()
                if missing is None:
                    raise
                raise MalformedStreamError(
                    f"stream from {self._url} ended before the reply finished ({missing})",
                    provider=self._provider,
                ) from None
            except (httpx.TransportError, httpx.DecodingError) as exc:
                self._done = True
                raise self._http_error(exc, mid_reply=True) from exc
            except BaseException:  # Cancelled, KeyboardInterrupt: httpx's iterator is gone
                self._done = True
                raise
            batch = self._decode(data)
            if batch:
                return batch
            if self._done:
                await self._end()

    async def _end(self) -> NoReturn:
        """Finish iteration: drain the body if the end marker or an error left some of it
        unread, then raise the pending in-stream error, or StopAsyncIteration."""
        if self._drain_pending:
            self._drain_pending = False
            await self._drain()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        raise StopAsyncIteration

    async def _drain(self) -> None:
        # What follows the end marker (or an in-stream error) is normally just the end of
        # the body. Reading it lets httpcore put the connection back in the pool, and lets
        # httpx's nested async generators finish instead of being collected half-way
        # (which Trio reports as a ResourceWarning). A server that keeps sending, or keeps
        # the response open, gets a bounded amount of patience, then the response is closed.
        byte_iter = self._bytes
        if byte_iter is None:
            return
        budget = _DRAIN_LIMIT
        with trio.move_on_after(_DRAIN_GRACE):
            try:
                async for data in byte_iter:
                    budget -= len(data)
                    if budget < 0:
                        break
            except httpx.HTTPError:
                pass  # the reply is complete; a failure after it changes nothing

    # --- helpers for the wire format ---------------------------------------------------

    def _fail(self, error: ProviderError) -> None:
        """Hold ``error`` back until the chunks decoded before it were returned."""
        self._error = error
        self._done = self._drain_pending = True

    def _http_error(self, exc: httpx.HTTPError, *, mid_reply: bool) -> ProviderError:
        """The typed error for httpx's ``exc``, raised while sending the request or, with
        ``mid_reply``, while reading the body."""
        url = self._url
        if isinstance(exc, httpx.TimeoutException):
            what = (
                f"{url} stopped sending mid-reply" if mid_reply else f"no answer from {url} in time"
            )
            return ProviderTimeout(f"{what} ({type(exc).__name__})", provider=self._provider)
        if isinstance(exc, httpx.TransportError):
            what = (
                f"connection to {url} failed mid-reply" if mid_reply else f"could not reach {url}"
            )
            return ProviderConnectionError(
                f"{what}: {self._describe(exc)}", provider=self._provider
            )
        return MalformedStreamError(
            self._mask(f"could not decode the body from {url}: {exc}"), provider=self._provider
        )

    def _malformed(self, what: str) -> MalformedStreamError:
        """The error for a stream that sent ``what``, which the wire format does not allow."""
        return MalformedStreamError(
            self._mask(f"stream from {self._url} sent {what}"), provider=self._provider
        )

    def _undecodable(
        self, data: bytes, exc: msgspec.DecodeError, expected: str
    ) -> MalformedStreamError:
        """The error for a ``data`` payload that does not decode as ``expected`` (what the
        wire format sends: "a chat completion chunk", say)."""
        malformed = self._malformed(
            f"a data payload that is not {expected} ({exc}): {self._excerpt(data)}"
        )
        malformed.__cause__ = exc
        return malformed

    def _stream_error(self, error: WireError | str | None, data: bytes) -> ProviderError:
        """The typed error for an error the provider sent inside the stream: ``error`` as
        decoded from ``data``, or ``None`` when ``data`` holds no readable error object."""
        if error is None:
            return ProviderError(
                self._mask(f"error in stream from {self._url}: {self._excerpt(data)}"),
                provider=self._provider,
            )
        return error_from_payload(error, provider=self._provider, secrets=self._secrets)

    def _describe(self, exc: Exception) -> str:
        return self._mask(str(exc) or type(exc).__name__)

    def _mask(self, text: str) -> str:
        """``text`` with the call's secrets masked: for every message that holds text the
        server sent (a proxy's error page may echo the request, key and all)."""
        return mask(text, self._secrets)

    def _excerpt(self, data: bytes) -> str:
        """:func:`excerpt` of ``data`` with the call's secrets masked before it is cut."""
        return excerpt(data, secrets=self._secrets)

    async def _read_some(self, response: httpx.Response) -> bytes:
        """Up to ``_ERROR_BODY_LIMIT`` bytes of the body, for an error message; the
        response is closed after."""
        parts: list[bytes] = []
        size = 0
        pieces = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())
        try:
            async for piece in pieces:
                parts.append(piece)
                size += len(piece)
                if size >= _ERROR_BODY_LIMIT:
                    break
        except httpx.TransportError:
            pass  # the status alone still says what went wrong
        except httpx.DecodingError as exc:
            # A body that is not in its content-encoding: say so, instead of showing none.
            return f"(a body that could not be decoded: {exc})".encode()
        finally:
            await response.aclose()
            await _finish(pieces)
        return b"".join(parts)[:_ERROR_BODY_LIMIT]


async def _finish(byte_iter: AsyncGenerator[bytes, None]) -> None:
    """Run ``byte_iter``, whose response was just closed, to its end.

    httpx reads a body through a chain of nested async generators; closing the outer one
    leaves the inner ones suspended, to be collected later (Trio reports each as a
    ResourceWarning). Stepping it instead, in a cancelled scope, sends the error from the
    closed connection (or ``Cancelled``, at the first checkpoint) through every generator
    in the chain, which ends them all. What is still buffered is read and dropped. Never
    raises ``Cancelled``.
    """
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            async for _ in byte_iter:
                pass
        except Exception:
            pass  # the response is closed; whatever its stream says now changes nothing
        finally:
            await byte_iter.aclose()


def _is_event_stream(content_type: str) -> bool:
    return content_type.partition(";")[0].strip().lower() == "text/event-stream"


class HTTPProvider(trio.abc.AsyncResource):
    """What a provider adapter is besides its wire format: the default model, the endpoint
    every call is POSTed to, its headers, and the HTTP client.

    ``headers`` are the adapter's own (its API key's header among them, when there is a
    key), sent after ``Accept`` and ``Content-Type``; ``extra_headers`` are the caller's,
    which replace any of the same name. Every error message masks ``api_key`` and the
    secrets in the headers and the URL's query (see :func:`collect_secrets`).

    An injected ``httpx.AsyncClient`` belongs to the caller and is never closed here.
    Without one, the provider makes its own (with :data:`DEFAULT_TIMEOUT`) on first use
    and closes it in :meth:`aclose`, or on leaving ``async with provider``; after that,
    the provider refuses new streams.
    """

    def __init__(
        self,
        model: str,
        url: httpx.URL,
        *,
        headers: Mapping[str, str],
        extra_headers: Mapping[str, str] | None,
        api_key: str | None,
        client: httpx.AsyncClient | None,
    ) -> None:
        self._model = model
        self._url = url
        # For error messages; computed once, as parsing URLs costs more than a chunk does.
        self._url_text = describe_url(url)
        self._headers = httpx.Headers(
            {"Accept": "text/event-stream", "Content-Type": "application/json", **headers}
        )
        if extra_headers:
            self._headers.update(extra_headers)
        self._secrets = collect_secrets(api_key, self._headers, url)
        self._client = client
        self._owns_client = client is None
        self._closed = False

    @property
    def model(self) -> str:
        """The default model name."""
        return self._model

    def __repr__(self) -> str:
        # The URL without its query string; never the headers, which hold the key.
        return f"{type(self).__name__}({self._model!r}, base_url={self._url_text!r})"

    def _check_open(self) -> None:
        """Raise :class:`trio.ClosedResourceError` once :meth:`aclose` was called."""
        if self._closed:
            raise trio.ClosedResourceError(f"this {type(self).__name__} provider was closed")

    def _post(self, body: bytes) -> HTTPCall:
        """The call that POSTs ``body`` to the endpoint; nothing is sent yet. The
        provider's own client is made here, on first use."""
        client = self._client
        if client is None:
            client = self._client = httpx.AsyncClient(timeout=DEFAULT_TIMEOUT)
        request = client.build_request("POST", self._url, content=body, headers=self._headers)
        return HTTPCall(client, request, self._url_text, self._secrets)

    async def aclose(self) -> None:
        """Close the HTTP client the provider made itself (a checkpoint); idempotent.

        An injected client is left open: it belongs to the caller.
        """
        self._closed = True
        client, self._client = self._client, None
        if self._owns_client and client is not None:
            await client.aclose()
        else:
            await trio.lowlevel.checkpoint()

    async def __aenter__(self: _P) -> _P:
        """Return the provider itself (a checkpoint)."""
        await trio.lowlevel.checkpoint()
        return self
