"""A provider from a string such as ``"openai:gpt-4o-mini"``: what the CLI's ``--model`` takes.

A provider string is ``PREFIX:MODEL``. The prefix picks the adapter and where its base URL
and API key come from; the model is passed on as it is (Ollama's ``llama3.2:3b`` keeps its
tag, since only the first colon separates the prefix)::

    openai:MODEL                 OpenAIChat, OPENAI_API_KEY, OPENAI_BASE_URL or the default
    anthropic:MODEL              AnthropicMessages, ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL
    ollama:MODEL                 OpenAIChat at http://localhost:11434/v1 (or OLLAMA_HOST), no key
    openai-compatible:MODEL@URL  OpenAIChat at URL, OPENAI_COMPATIBLE_API_KEY when set, else no key

``OPENAI_API_KEY`` goes to OpenAI only (its URL or ``OPENAI_BASE_URL``), never to the
host an ``openai-compatible`` string names: that host may be anyone's.

Reading the environment happens here and only here: the adapters themselves never read it.
Everything wrong with a string or the environment is a :class:`~trurn.ConfigurationError`
whose one-line message says what to write or set, raised before anything is sent.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Literal

import httpx

from .._errors import ConfigurationError
from ._base import Provider
from ._http import describe_url
from ._openai import OpenAIChat

__all__ = ["is_provider_prefix", "provider_from_string"]

_OPENAI_URL = "https://api.openai.com/v1"
_OPENAI_HOST = "api.openai.com"
_ANTHROPIC_URL = "https://api.anthropic.com"
_OLLAMA_URL = "http://localhost:11434/v1"
_OLLAMA_PORT = 11434
_FORMS = "openai:MODEL, anthropic:MODEL, ollama:MODEL or openai-compatible:MODEL@URL"
# The "@" that starts the URL: model names may hold an "@" themselves (Vertex's
# "claude-sonnet-4-5@20250929"), URLs are recognised by their scheme.
_URL_START = re.compile(r"@(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def provider_from_string(
    spec: str,
    *,
    api_key: str | None = None,
    client: httpx.AsyncClient | None = None,
    env: Mapping[str, str] | None = None,
) -> Provider:
    """The provider a string names, e.g. ``provider_from_string("anthropic:claude-sonnet-4-5")``.

    ``spec`` is ``PREFIX:MODEL`` (see the module docstring for the prefixes). ``api_key``
    is used instead of the environment's key, with every prefix (Ollama included, for a
    proxy in front of it that wants one). ``client`` is the ``httpx.AsyncClient`` the
    provider uses (it stays the caller's to close); without one the provider makes its
    own. ``env`` is where variables are read (default :data:`os.environ`); a variable
    set to the empty string counts as unset.

    - ``openai:MODEL``: key from ``OPENAI_API_KEY`` (required), base URL from
      ``OPENAI_BASE_URL`` if set, else ``https://api.openai.com/v1``. Against
      ``api.openai.com`` the output limit is sent as ``max_completion_tokens`` (the
      o-series and gpt-5 models refuse ``max_tokens``; every current chat model takes
      it); elsewhere (a gateway, Azure) as ``max_tokens``, which compatible servers know.
    - ``anthropic:MODEL``: key from ``ANTHROPIC_API_KEY`` (required), base URL from
      ``ANTHROPIC_BASE_URL`` if set, else ``https://api.anthropic.com``.
    - ``ollama:MODEL``: ``http://localhost:11434/v1`` and no key. ``OLLAMA_HOST`` is read
      the way Ollama reads it: ``host``, ``host:port``, ``:port`` or
      ``scheme://host[:port][/path]``, port 11434 when none is given and there is no
      scheme (80 or 443 with ``http://`` or ``https://``); ``0.0.0.0`` (a server's
      "listen everywhere") means this machine; ``/v1`` is appended.
    - ``openai-compatible:MODEL@URL``: ``URL`` is the API's base (``.../v1``); key from
      ``OPENAI_COMPATIBLE_API_KEY`` when set, else none. ``OPENAI_API_KEY`` is never
      read here: it is a credential for OpenAI, and ``URL`` may be any host.

    Raises :class:`~trurn.ConfigurationError` (one line, saying what to write or set) for
    an unknown prefix, a missing model, a missing or bad URL, a bad ``*_BASE_URL`` or
    ``OLLAMA_HOST``, or a required key that is neither given nor set. Never checkpoints;
    nothing is sent until the provider streams.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    prefix, colon, rest = spec.strip().partition(":")
    prefix = prefix.strip().lower()
    if not colon:
        raise ConfigurationError(f"provider string {spec!r} has no provider prefix: write {_FORMS}")
    build = _BUILDERS.get(prefix)
    if build is None:
        # Only the prefix is echoed: the rest may hold a URL with credentials in it.
        raise ConfigurationError(f"unknown provider prefix '{prefix}:': write {_FORMS}")
    return build(rest.strip(), api_key, client, environ)


def _openai(
    rest: str, api_key: str | None, client: httpx.AsyncClient | None, env: Mapping[str, str]
) -> Provider:
    model = _model(rest, "openai", "gpt-4o-mini")
    base_url = _url(_get(env, "OPENAI_BASE_URL") or _OPENAI_URL, "OPENAI_BASE_URL")
    key = api_key or _required_key(env, "OPENAI_API_KEY", f"openai:{model}")
    # OpenAI's own API takes max_completion_tokens from every chat model and refuses
    # max_tokens from reasoning models; other servers behind OPENAI_BASE_URL may know
    # only max_tokens.
    field: Literal["max_tokens", "max_completion_tokens"] = (
        "max_completion_tokens" if httpx.URL(base_url).host == _OPENAI_HOST else "max_tokens"
    )
    return OpenAIChat(model, base_url=base_url, api_key=key, client=client, max_tokens_field=field)


def _anthropic(
    rest: str, api_key: str | None, client: httpx.AsyncClient | None, env: Mapping[str, str]
) -> Provider:
    # Imported here so that choosing an OpenAI-compatible provider never loads it.
    from ._anthropic import AnthropicMessages

    model = _model(rest, "anthropic", "claude-sonnet-4-5")
    base_url = _url(_get(env, "ANTHROPIC_BASE_URL") or _ANTHROPIC_URL, "ANTHROPIC_BASE_URL")
    key = api_key or _required_key(env, "ANTHROPIC_API_KEY", f"anthropic:{model}")
    return AnthropicMessages(model, base_url=base_url, api_key=key, client=client)


def _ollama(
    rest: str, api_key: str | None, client: httpx.AsyncClient | None, env: Mapping[str, str]
) -> Provider:
    model = _model(rest, "ollama", "llama3.2")
    host = _get(env, "OLLAMA_HOST")
    base_url = _ollama_url(host) if host else _OLLAMA_URL
    return OpenAIChat(model, base_url=base_url, api_key=api_key, client=client)


def _compatible(
    rest: str, api_key: str | None, client: httpx.AsyncClient | None, env: Mapping[str, str]
) -> Provider:
    example = "openai-compatible:MODEL@http://localhost:8000/v1"
    found = _URL_START.search(rest)
    if found is None:
        if "@" in rest:
            raise ConfigurationError(
                f"the URL after '@' must start with http:// or https://: write {example}"
            )
        raise ConfigurationError(f"openai-compatible needs a model and a URL: write {example}")
    model = rest[: found.start()].strip()
    if not model:
        raise ConfigurationError(f"openai-compatible needs a model before '@': write {example}")
    base_url = _url(rest[found.end() :].strip(), "the URL after '@'")
    # Not OPENAI_API_KEY: that would hand the user's OpenAI credential to whatever host
    # the string names.
    key = api_key or _get(env, "OPENAI_COMPATIBLE_API_KEY")
    return OpenAIChat(model, base_url=base_url, api_key=key, client=client)


_Builder = Callable[[str, str | None, httpx.AsyncClient | None, Mapping[str, str]], Provider]
_BUILDERS: dict[str, _Builder] = {
    "openai": _openai,
    "anthropic": _anthropic,
    "ollama": _ollama,
    "openai-compatible": _compatible,
}


def _get(env: Mapping[str, str], name: str) -> str | None:
    return env.get(name, "").strip() or None


def _model(rest: str, prefix: str, example: str) -> str:
    if not rest:
        raise ConfigurationError(f"'{prefix}:' names no model: write e.g. {prefix}:{example}")
    return rest


def _required_key(env: Mapping[str, str], name: str, spec: str) -> str:
    key = _get(env, name)
    if key is None:
        raise ConfigurationError(f"{spec} needs an API key: set {name} or pass api_key=")
    return key


def _url(text: str, where: str) -> str:
    """``text`` if it is an http(s) URL with a host; the error names ``where`` it came from.

    The message never shows the URL's query string or credentials.
    """
    if any(char.isspace() for char in text):
        raise ConfigurationError(f"{where} is not a URL: it contains white space")
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise ConfigurationError(f"{where} is not a URL ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(
            f"{where} must be an http:// or https:// URL with a host, got {describe_url(url)!r}"
        )
    if url.port is not None and not 0 < url.port < 65536:
        raise ConfigurationError(f"{where} has a port out of range: {url.port}")
    return text


def _ollama_url(host: str) -> str:
    """The Chat Completions base URL for an ``OLLAMA_HOST`` value (Ollama's own rules)."""
    scheme, sep, hostport = host.partition("://")
    if not sep:
        scheme, hostport, default_port = "http", host, _OLLAMA_PORT
    else:
        default_port = 443 if scheme.lower() == "https" else 80
    hostport, slash, path = hostport.partition("/")
    path = "/" + path.strip("/") if slash and path.strip("/") else ""
    name, port_text = _split_host_port(hostport)
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigurationError(f"OLLAMA_HOST has a bad port {port_text!r}")
        port = int(port_text)
    else:
        port = default_port
    if name in ("", "0.0.0.0"):
        name = "127.0.0.1"
    elif name == "::":
        name = "::1"
    netloc = f"[{name}]" if ":" in name else name
    return _url(f"{scheme}://{netloc}:{port}{path}/v1", "OLLAMA_HOST")


def _split_host_port(hostport: str) -> tuple[str, str]:
    """``("host", "port")`` from ``host``, ``host:port``, ``:port``, ``[v6]`` or ``[v6]:port``."""
    if hostport.startswith("["):
        name, bracket, after = hostport[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ConfigurationError(f"OLLAMA_HOST has a bad IPv6 address {hostport!r}")
        return name, after[1:]
    if hostport.count(":") > 1:  # a bare IPv6 address, no port
        return hostport, ""
    name, _, port = hostport.partition(":")
    return name, port


def is_provider_prefix(name: str) -> bool:
    """Whether ``name`` is a known provider prefix (``"openai"``, ``"anthropic"``, ...)."""
    return name.strip().lower() in _BUILDERS
