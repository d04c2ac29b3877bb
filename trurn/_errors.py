"""trurn's exception tree.

Every exception trurn raises on purpose derives from :class:`TrurnError`::

    TrurnError
    ├── ProviderError                 the model provider failed (carries status_code, provider)
    │   ├── AuthenticationError       401: missing or wrong API key
    │   ├── PermissionDeniedError     403: the key may not use this model or endpoint
    │   ├── NotFoundError             404: unknown model or wrong base URL
    │   ├── BadRequestError           400/422: the provider rejected the request
    │   │   └── ContextOverflowError  the prompt does not fit the model's context window
    │   ├── RateLimitError            429: slow down (see retry_after)
    │   ├── OverloadedError           529 / "overloaded": the provider is busy
    │   ├── ServerError               5xx: the provider failed
    │   ├── ProviderTimeout           no answer in time
    │   ├── ProviderConnectionError   could not reach the provider, or it hung up
    │   └── MalformedStreamError      the reply is not the stream format it should be
    ├── ToolError                     raise from a tool to fail with a message for the model
    │   └── ToolArgumentsError        the model's arguments do not fit the tool's schema
    ├── RequestError                  an answer to an approval or choice request is refused
    │   ├── UnknownRequestError       no such request is open: never made, or expired (LookupError)
    │   ├── RequestAnsweredError      the request was already answered
    │   └── InvalidChoiceError        not one of the offered choices (also a ValueError)
    ├── ConfigurationError            a provider string or option is wrong (also a ValueError)
    ├── SubagentDepthError            turns nested deeper than the agent's max_depth
    └── SessionError                  a session file cannot be used as asked (see .path)
        ├── SessionIdError            a session id that cannot be a file name (also a ValueError)
        ├── SessionLockedError        another writer has the session file open
        ├── SessionWriteError         writing or syncing the file failed; it stays valid
        ├── SessionCorruptError       a line is not a record (see .line)
        ├── SessionExistsError        a session with this id is already there
        ├── SessionNotFoundError      no session with this id (also a LookupError)
        └── SessionVersionError       the file is from a newer trurn

Lower-level errors (httpx, msgspec) are mapped to the most specific class with
``raise ... from exc``. Messages carry the provider's own words and never an API key.
"""

from __future__ import annotations

import os
import sys

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "ContextOverflowError",
    "InvalidChoiceError",
    "MalformedStreamError",
    "NotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderTimeout",
    "RateLimitError",
    "RequestAnsweredError",
    "RequestError",
    "ServerError",
    "SessionCorruptError",
    "SessionError",
    "SessionExistsError",
    "SessionIdError",
    "SessionLockedError",
    "SessionNotFoundError",
    "SessionVersionError",
    "SessionWriteError",
    "SubagentDepthError",
    "ToolArgumentsError",
    "ToolError",
    "TrurnError",
    "UnknownRequestError",
    "unwrapped",
]


class TrurnError(Exception):
    """Base class of every exception trurn raises on purpose."""


class ProviderError(TrurnError):
    """The model provider failed.

    ``status_code`` is the HTTP status (``None`` when there was no response, or for
    an error sent inside a 200 stream); ``provider`` names the adapter; ``retryable``
    says whether sending the same request again may succeed; ``retry_after`` is the
    server's ``Retry-After`` hint in seconds, when it sent one.
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        provider: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.provider = provider
        self.retry_after = retry_after


class AuthenticationError(ProviderError):
    """The API key is missing or wrong (HTTP 401)."""


class PermissionDeniedError(ProviderError):
    """The API key may not use this model or endpoint (HTTP 403)."""


class NotFoundError(ProviderError):
    """The model or the endpoint does not exist (HTTP 404)."""


class BadRequestError(ProviderError):
    """The provider rejected the request as invalid (HTTP 400 or 422)."""


class ContextOverflowError(BadRequestError):
    """The conversation does not fit the model's context window."""


class RateLimitError(ProviderError):
    """Too many requests (HTTP 429); see ``retry_after``."""

    retryable = True


class OverloadedError(ProviderError):
    """The provider is overloaded (HTTP 529 or an ``overloaded_error``)."""

    retryable = True


class ServerError(ProviderError):
    """The provider failed (HTTP 5xx)."""

    retryable = True


class ProviderTimeout(ProviderError):
    """The provider did not answer in time."""

    retryable = True


class ProviderConnectionError(ProviderError):
    """The provider could not be reached, or closed the connection mid-reply."""

    retryable = True


class MalformedStreamError(ProviderError):
    """The provider's reply is not the stream format it should be."""


class ToolError(TrurnError):
    """Raise from a tool to fail with ``message`` as the result the model reads.

    Any other exception from a tool is reported too (with its type and text); this
    one lets a tool choose exactly what the model is told.
    """


class ToolArgumentsError(ToolError):
    """The model's arguments do not fit the tool's schema.

    A ``@tool`` function raises it when :func:`msgspec.convert` rejects the arguments;
    explicit tools may raise it after their own checks. The turn reports it
    as an ``"error"`` result saying the arguments were invalid (``error_type``
    ``"ValidationError"``), so the model knows to fix its call rather than retry it.
    """


class SubagentDepthError(TrurnError):
    """A turn was started nested deeper than its agent's ``max_depth`` allows.

    Raised before the turn does anything. From inside a tool (a subagent started by a
    subagent...), it becomes that tool's error result, which the model reads.
    """


class RequestError(TrurnError):
    """An answer to an approval or choice request was refused; ``request_id`` names it.

    Raised to the answerer (``agent.respond``, ``agent.respond_choice``), never into
    the turn: the request's tool call keeps waiting for a valid answer.
    """

    def __init__(self, message: str, *, request_id: str) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


class UnknownRequestError(RequestError, LookupError):
    """No request with this id is open: it was never made, it is of the other kind
    (approval vs choice), or it expired because its tool call ended (the turn was
    cancelled or finished, or the call timed out) before an answer came."""


class RequestAnsweredError(RequestError):
    """The request was already answered (by the agent's callback or another caller)."""


class InvalidChoiceError(RequestError, ValueError):
    """The answer is not one of the request's choices; the request stays open."""


class ConfigurationError(TrurnError, ValueError):
    """A provider string or option is wrong; the one-line message says what to set.

    Raised before anything is sent: an unknown provider prefix, a missing model name or
    URL, a URL that is not http(s), an API key that is neither given nor in the
    environment (the message names the variable to set). It is a :class:`ValueError`
    too, so code that checks arguments that way catches it.
    """


class SessionError(TrurnError):
    """A session file cannot be used as asked. ``path`` names it (``None`` for a bad id)."""

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = None if path is None else os.fspath(path)


class SessionIdError(SessionError, ValueError):
    """A session id that cannot be a file name; raised before any file is touched."""


class SessionLockedError(SessionError):
    """Another writer (in this process or another one) has the session file open."""


class SessionWriteError(SessionError):
    """Writing or syncing the session file failed (full disk, read-only file system...).

    The underlying ``OSError`` is the ``__cause__``. Unless the message says otherwise,
    the file still holds only whole lines and the records of the failed append are not
    in it.
    """


class SessionCorruptError(SessionError):
    """A line of the session file is not a record; ``line`` is its 1-based number."""

    def __init__(self, message: str, *, path: str | os.PathLike[str], line: int) -> None:
        super().__init__(message, path=path)
        self.line = line


class SessionVersionError(SessionError):
    """The session file was written in a newer format than this trurn reads."""

    def __init__(
        self, message: str, *, path: str | os.PathLike[str], found: int, supported: int
    ) -> None:
        super().__init__(message, path=path)
        self.found = found
        self.supported = supported


class SessionExistsError(SessionError):
    """A session with this id already exists where the new one would go.

    ``path`` names the existing file (or link). Nothing was written.
    """


class SessionNotFoundError(SessionError, LookupError):
    """No session with this id, in the work dir's links or in the global date dirs."""


def unwrapped(exc: BaseException) -> BaseException:
    """``exc`` without the one-member exception groups that trio's nurseries put around
    it: the exception itself when one escaped, else the innermost group of several."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
