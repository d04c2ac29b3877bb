"""provider_from_string: which adapter, URL and key each provider string gives, and the
one-line errors for strings and environments that do not work.

Every test passes ``env`` explicitly, so the real environment is never read. Requests go
to an ``httpx.MockTransport`` that records them and answers 401, so nothing leaves the
process and the test sees exactly what the provider would send.
"""

from __future__ import annotations

import json

import httpx
import pytest

from trurn._errors import AuthenticationError, ConfigurationError, TrurnError
from trurn._messages import UserMessage
from trurn.providers._base import Provider, Request
from trurn.providers._openai import OpenAIChat
from trurn.providers._select import provider_from_string

OPENAI_KEY = "sk-openai-DO-NOT-LEAK"
ANTHROPIC_KEY = "sk-ant-DO-NOT-LEAK"


class Recorder:
    """A transport handler that records each request and refuses it with a 401."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        error = {"type": "error", "error": {"type": "authentication_error", "message": "no"}}
        return httpx.Response(401, json=error)


HI = Request(messages=[UserMessage("hi")])


async def sent_by(
    spec: str, env: dict[str, str], request: Request = HI, **options: str
) -> httpx.Request:
    """The HTTP request the provider ``spec`` names sends for ``request`` (one user message)."""
    recorder = Recorder()
    async with httpx.AsyncClient(transport=httpx.MockTransport(recorder)) as client:
        provider = provider_from_string(spec, client=client, env=env, **options)
        with pytest.raises(AuthenticationError):
            async with provider.stream(request):
                pass  # pragma: no cover - the 401 is raised on entering
        assert not client.is_closed  # the injected client stays the caller's
    assert len(recorder.requests) == 1
    return recorder.requests[0]


def config_error(spec: str, env: dict[str, str], **options: str) -> str:
    """The message of the ConfigurationError ``spec`` raises; checks it is one line."""
    with pytest.raises(ConfigurationError) as caught:
        provider_from_string(spec, env=env, **options)
    message = str(caught.value)
    assert message
    assert "\n" not in message
    return message


# --- openai ------------------------------------------------------------------------------


async def test_openai_key_from_the_environment_and_default_url() -> None:
    sent = await sent_by("openai:gpt-4o-mini", {"OPENAI_API_KEY": OPENAI_KEY})
    assert str(sent.url) == "https://api.openai.com/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert b'"model":"gpt-4o-mini"' in sent.content


async def test_openai_base_url_from_the_environment() -> None:
    env = {"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": "https://gateway.example.test/v1/"}
    sent = await sent_by("openai:gpt-4o", env)
    assert str(sent.url) == "https://gateway.example.test/v1/chat/completions"


@pytest.mark.parametrize(
    ("base_url", "field"),
    [
        (None, "max_completion_tokens"),
        ("https://api.openai.com/v1", "max_completion_tokens"),
        ("https://gateway.example.test/v1", "max_tokens"),
    ],
    ids=["default-url", "openai-url-from-env", "gateway"],
)
async def test_openai_sends_max_completion_tokens_to_openai_itself(
    base_url: str | None, field: str
) -> None:
    # o-series and gpt-5 models refuse max_tokens; OpenAI takes max_completion_tokens from
    # every chat model. Another server behind OPENAI_BASE_URL may only know max_tokens.
    env = {"OPENAI_API_KEY": OPENAI_KEY}
    if base_url is not None:
        env["OPENAI_BASE_URL"] = base_url
    request = Request(messages=[UserMessage("hi")], max_tokens=77)
    body = json.loads((await sent_by("openai:o4-mini", env, request)).content)
    other = {"max_tokens", "max_completion_tokens"} - {field}
    assert body[field] == 77
    assert not other & body.keys()


async def test_api_key_argument_wins_over_the_environment() -> None:
    sent = await sent_by("openai:gpt-4o", {"OPENAI_API_KEY": "from-env"}, api_key="given")
    assert sent.headers["authorization"] == "Bearer given"


@pytest.mark.parametrize("env", [{}, {"OPENAI_API_KEY": ""}, {"OPENAI_API_KEY": "  "}])
def test_openai_without_a_key_names_the_variable(env: dict[str, str]) -> None:
    message = config_error("openai:gpt-4o-mini", env)
    assert message == "openai:gpt-4o-mini needs an API key: set OPENAI_API_KEY or pass api_key="


def test_openai_key_in_the_environment_of_another_provider_does_not_count() -> None:
    message = config_error("openai:gpt-4o", {"ANTHROPIC_API_KEY": ANTHROPIC_KEY})
    assert "set OPENAI_API_KEY" in message


def test_the_result_is_a_provider_with_the_model() -> None:
    provider = provider_from_string("openai:gpt-4o-mini", env={"OPENAI_API_KEY": OPENAI_KEY})
    assert isinstance(provider, OpenAIChat)
    assert isinstance(provider, Provider)
    assert provider.model == "gpt-4o-mini"
    assert OPENAI_KEY not in repr(provider)


def test_prefix_is_case_insensitive_and_outer_spaces_are_ignored() -> None:
    provider = provider_from_string("  OpenAI: gpt-4o ", env={"OPENAI_API_KEY": OPENAI_KEY})
    assert provider.model == "gpt-4o"


# --- anthropic ---------------------------------------------------------------------------


async def test_anthropic_key_from_the_environment_and_default_url() -> None:
    sent = await sent_by("anthropic:claude-sonnet-4-5", {"ANTHROPIC_API_KEY": ANTHROPIC_KEY})
    assert str(sent.url) == "https://api.anthropic.com/v1/messages"
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY
    assert b'"model":"claude-sonnet-4-5"' in sent.content


async def test_anthropic_base_url_from_the_environment_and_key_argument() -> None:
    env = {"ANTHROPIC_API_KEY": "from-env", "ANTHROPIC_BASE_URL": "http://127.0.0.1:9/proxy"}
    sent = await sent_by("anthropic:claude-haiku-4-5", env, api_key="given")
    assert str(sent.url) == "http://127.0.0.1:9/proxy/v1/messages"
    assert sent.headers["x-api-key"] == "given"


def test_anthropic_without_a_key_names_the_variable() -> None:
    message = config_error("anthropic:claude-sonnet-4-5", {"OPENAI_API_KEY": OPENAI_KEY})
    assert message == (
        "anthropic:claude-sonnet-4-5 needs an API key: set ANTHROPIC_API_KEY or pass api_key="
    )


# --- ollama ------------------------------------------------------------------------------


async def test_ollama_default_url_and_no_key() -> None:
    sent = await sent_by("ollama:llama3.2:3b", {"OPENAI_API_KEY": OPENAI_KEY})
    assert str(sent.url) == "http://localhost:11434/v1/chat/completions"
    assert "authorization" not in sent.headers
    assert b'"model":"llama3.2:3b"' in sent.content  # the tag after the second colon stays


async def test_ollama_takes_a_key_when_given() -> None:
    sent = await sent_by("ollama:llama3.2", {}, api_key="proxy-key")
    assert sent.headers["authorization"] == "Bearer proxy-key"


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:11434/v1"),
        ("0.0.0.0:8080", "http://127.0.0.1:8080/v1"),
        (":5000", "http://127.0.0.1:5000/v1"),
        ("gpu.example.test", "http://gpu.example.test:11434/v1"),
        ("gpu.example.test:1234", "http://gpu.example.test:1234/v1"),
        ("http://gpu.example.test", "http://gpu.example.test:80/v1"),
        ("https://gpu.example.test", "https://gpu.example.test:443/v1"),
        ("http://gpu.example.test:8080/ollama/", "http://gpu.example.test:8080/ollama/v1"),
        ("[::1]:9000", "http://[::1]:9000/v1"),
        ("::", "http://[::1]:11434/v1"),
        ("fe80::1", "http://[fe80::1]:11434/v1"),
        ("  ", "http://localhost:11434/v1"),  # blank counts as unset
    ],
)
async def test_ollama_host_is_read_like_ollama_reads_it(host: str, url: str) -> None:
    sent = await sent_by("ollama:llama3.2", {"OLLAMA_HOST": host})
    assert sent.url == httpx.URL(url + "/chat/completions")


@pytest.mark.parametrize(
    ("host", "complaint"),
    [
        ("gpu.example.test:port", "OLLAMA_HOST has a bad port 'port'"),
        ("gpu.example.test:70000", "OLLAMA_HOST has a bad port '70000'"),
        ("[::1", "OLLAMA_HOST has a bad IPv6 address '[::1'"),
        ("ftp://gpu.example.test", "OLLAMA_HOST must be an http:// or https:// URL"),
    ],
)
def test_bad_ollama_host(host: str, complaint: str) -> None:
    assert config_error("ollama:llama3.2", {"OLLAMA_HOST": host}).startswith(complaint)


# --- openai-compatible -------------------------------------------------------------------


async def test_openai_compatible_url_and_key_when_set() -> None:
    spec = "openai-compatible:qwen2.5@http://127.0.0.1:8000/v1"
    env = {"OPENAI_COMPATIBLE_API_KEY": "sk-local", "OPENAI_API_KEY": OPENAI_KEY}
    sent = await sent_by(spec, env)
    assert str(sent.url) == "http://127.0.0.1:8000/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-local"
    assert b'"model":"qwen2.5"' in sent.content
    assert b'"max_tokens"' not in sent.content  # no limit asked for, none sent


async def test_openai_compatible_never_sends_the_openai_key() -> None:
    # OPENAI_API_KEY is the user's OpenAI credential; the URL may be anyone's server.
    spec = "openai-compatible:m@https://llm.example.test/v1"
    for env in (
        {"OPENAI_API_KEY": OPENAI_KEY},
        {"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_COMPATIBLE_API_KEY": " "},
    ):
        sent = await sent_by(spec, env)
        assert "authorization" not in sent.headers
        assert OPENAI_KEY.encode() not in sent.content


async def test_openai_compatible_takes_the_api_key_argument() -> None:
    spec = "openai-compatible:m@https://llm.example.test/v1"
    env = {"OPENAI_COMPATIBLE_API_KEY": "from-env"}
    sent = await sent_by(spec, env, api_key="given")
    assert sent.headers["authorization"] == "Bearer given"


async def test_openai_compatible_sends_max_tokens() -> None:
    request = Request(messages=[UserMessage("hi")], max_tokens=9)
    sent = await sent_by("openai-compatible:m@http://127.0.0.1:8000/v1", {}, request)
    assert json.loads(sent.content)["max_tokens"] == 9


async def test_openai_compatible_without_a_key_sends_none() -> None:
    sent = await sent_by("openai-compatible:m@https://llm.example.test/v1?tenant=a", {})
    assert str(sent.url) == "https://llm.example.test/v1/chat/completions?tenant=a"
    assert "authorization" not in sent.headers


async def test_openai_compatible_model_may_hold_an_at_sign() -> None:
    sent = await sent_by("openai-compatible:claude@2025@http://127.0.0.1:8000/v1", {})
    assert b'"model":"claude@2025"' in sent.content
    assert sent.url.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("openai-compatible:m", "openai-compatible needs a model and a URL: write "),
        ("openai-compatible:m@", "the URL after '@' must start with http:// or https://"),
        ("openai-compatible:m@localhost:8000/v1", "the URL after '@' must start with http://"),
        ("openai-compatible:@http://h/v1", "openai-compatible needs a model before '@'"),
        ("openai-compatible:m@ftp://h/v1", "the URL after '@' must be an http:// or https://"),
        ("openai-compatible:m@http:///v1", "the URL after '@' must be an http:// or https://"),
        ("openai-compatible:m@http://h:99999/v1", "the URL after '@' has a port out of range"),
        ("openai-compatible:m@http://h st/v1", "the URL after '@' is not a URL"),
    ],
)
def test_bad_openai_compatible_strings(spec: str, complaint: str) -> None:
    assert config_error(spec, {}).startswith(complaint)


# --- strings and environments that do not work ------------------------------------------


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("gemini:gemini-2.5-pro", "unknown provider prefix 'gemini:': write "),
        (":gpt-4o", "unknown provider prefix ':': write "),
        ("http://127.0.0.1:8000/v1", "unknown provider prefix 'http:': write "),
        ("gpt-4o-mini", "provider string 'gpt-4o-mini' has no provider prefix: write "),
        ("", "provider string '' has no provider prefix: write "),
        ("openai:", "'openai:' names no model: write e.g. openai:gpt-4o-mini"),
        ("anthropic:  ", "'anthropic:' names no model: write e.g. anthropic:claude-sonnet-4-5"),
        ("ollama:", "'ollama:' names no model: write e.g. ollama:llama3.2"),
    ],
)
def test_bad_provider_strings(spec: str, complaint: str) -> None:
    env = {"OPENAI_API_KEY": OPENAI_KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY}
    message = config_error(spec, env)
    assert message.startswith(complaint)
    if complaint.endswith("write "):  # the forms to choose from are listed
        assert message.endswith(
            "openai:MODEL, anthropic:MODEL, ollama:MODEL or openai-compatible:MODEL@URL"
        )


@pytest.mark.parametrize(
    ("name", "value", "spec"),
    [
        ("OPENAI_BASE_URL", "ftp://user:sk-hidden@files.example.test/v1", "openai:gpt-4o"),
        ("ANTHROPIC_BASE_URL", "api.anthropic.com", "anthropic:claude-sonnet-4-5"),
    ],
)
def test_bad_base_url_in_the_environment_names_the_variable(
    name: str, value: str, spec: str
) -> None:
    env = {"OPENAI_API_KEY": OPENAI_KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY, name: value}
    message = config_error(spec, env)
    assert message.startswith(f"{name} must be an http:// or https:// URL with a host")
    assert "sk-hidden" not in message


def test_configuration_error_is_a_trurn_error_and_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown provider"):
        provider_from_string("nope:m", env={})
    assert issubclass(ConfigurationError, TrurnError)


def test_credentials_in_a_mistyped_string_are_not_echoed() -> None:
    message = config_error("openai-compat:m@http://user:sk-in-url@127.0.0.1:8000/v1", {})
    assert message.startswith("unknown provider prefix 'openai-compat:'")
    assert "sk-in-url" not in message


def test_keys_never_appear_in_errors() -> None:
    env = {"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": "http://"}
    message = config_error("openai:gpt-4o", env, api_key="sk-given-DO-NOT-LEAK")
    assert OPENAI_KEY not in message
    assert "sk-given" not in message
