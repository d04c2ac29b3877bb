"""Retries of failed model calls: exact waits on Trio's virtual clock."""

from __future__ import annotations

import httpx
import pytest
import trio
import trio.testing
from fakes import HANG, FakeProvider, text_reply

import trurn
from trurn import events
from trurn._chunks import TextDelta
from trurn._retry import retry_delay
from trurn.providers import OpenAIChat
from trurn.testing import Reply, StatusError, open_scripted_server

NO_JITTER = trurn.RetryPolicy(attempts=4, initial_delay=1.0, multiplier=2.0, jitter=0)


def rate_limited(retry_after: float | None = None) -> trurn.RateLimitError:
    return trurn.RateLimitError("slow down", status_code=429, retry_after=retry_after)


# --- the pure decision -------------------------------------------------------------------


def test_backoff_doubles_up_to_the_maximum() -> None:
    policy = trurn.RetryPolicy(attempts=10, initial_delay=0.5, max_delay=3, jitter=0)
    delays = [retry_delay(policy, n, trurn.ServerError("x")) for n in range(1, 10)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0]
    assert retry_delay(policy, 10, trurn.ServerError("x")) is None  # attempts used up


def test_jitter_spreads_the_wait_within_its_bounds() -> None:
    policy = trurn.RetryPolicy(initial_delay=10, jitter=0.2)
    assert retry_delay(policy, 1, trurn.ServerError("x"), uniform=lambda a, b: a) == 8.0
    assert retry_delay(policy, 1, trurn.ServerError("x"), uniform=lambda a, b: b) == 12.0


def test_retry_after_replaces_the_backoff_unless_it_is_too_long() -> None:
    policy = trurn.RetryPolicy(max_retry_after=60, jitter=0)
    assert retry_delay(policy, 1, rate_limited(retry_after=7.5)) == 7.5
    assert retry_delay(policy, 1, rate_limited(retry_after=600)) is None


@pytest.mark.parametrize(
    "error",
    [
        trurn.AuthenticationError("bad key", status_code=401),
        trurn.BadRequestError("bad", status_code=400),
        trurn.ContextOverflowError("too long", status_code=400),
        trurn.MalformedStreamError("garbage"),
    ],
)
def test_errors_that_cannot_succeed_again_are_not_retried(error: trurn.ProviderError) -> None:
    assert retry_delay(NO_JITTER, 1, error) is None


@pytest.mark.parametrize(
    "error",
    [
        rate_limited(),
        trurn.OverloadedError("busy", status_code=529),
        trurn.ServerError("oops", status_code=500),
        trurn.ProviderTimeout("slow"),
        trurn.ProviderConnectionError("reset"),
    ],
)
def test_transient_errors_are_retried(error: trurn.ProviderError) -> None:
    assert retry_delay(NO_JITTER, 1, error) == 1.0


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"attempts": 0}, "attempts must be at least 1"),
        ({"initial_delay": -1}, "initial_delay must be >= 0"),
        ({"multiplier": 0.5}, "multiplier must be >= 1"),
        ({"jitter": 2}, "jitter must be from 0 to 1"),
    ],
)
def test_bad_policies_are_refused(options: dict[str, float], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        trurn.RetryPolicy(**options)  # type: ignore[arg-type]


# --- in the turn ---------------------------------------------------------------------------


async def test_a_turn_retries_with_exact_backoff_and_announces_each_retry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = FakeProvider(
        [trurn.ServerError("oops"), trurn.OverloadedError("busy"), text_reply("finally")]
    )
    seen: list[events.Event] = []
    start = trio.current_time()
    result = await trurn.Agent(provider, retry=NO_JITTER).run_turn(
        trurn.Context(), "x", on_event=seen.append
    )
    assert result.text == "finally"
    assert trio.current_time() - start == 3.0  # 1 s, then 2 s
    retries = [e for e in seen if isinstance(e, events.Retrying)]
    assert [(r.attempt, r.delay, r.error_type) for r in retries] == [
        (1, 1.0, "ServerError"),
        (2, 2.0, "OverloadedError"),
    ]
    assert len(provider.requests) == 3


async def test_retry_after_is_honoured_exactly(autojump_clock: trio.testing.MockClock) -> None:
    provider = FakeProvider([rate_limited(retry_after=12.5), text_reply("ok")])
    start = trio.current_time()
    await trurn.Agent(provider, retry=NO_JITTER).run_turn(trurn.Context(), "x")
    assert trio.current_time() - start == 12.5


async def test_giving_up_raises_the_last_error(autojump_clock: trio.testing.MockClock) -> None:
    provider = FakeProvider([trurn.ServerError(f"oops {n}") for n in range(1, 5)])
    with pytest.raises(trurn.ServerError, match="oops 4"):
        await trurn.Agent(provider, retry=NO_JITTER).run_turn(trurn.Context(), "x")
    assert len(provider.requests) == 4


async def test_no_retry_once_output_arrived(autojump_clock: trio.testing.MockClock) -> None:
    reset = trurn.ProviderConnectionError("connection reset mid-reply")
    provider = FakeProvider([[[TextDelta("Partial")], reset], text_reply("never used")])
    context = trurn.Context()
    with pytest.raises(trurn.ProviderConnectionError, match="mid-reply"):
        await trurn.Agent(provider, retry=NO_JITTER).run_turn(context, "x")
    assert len(provider.requests) == 1
    partial = context.messages[-1]
    assert isinstance(partial, trurn.AssistantMessage)
    assert (partial.content, partial.aborted) == ("Partial", True)


async def test_an_error_in_the_stream_before_any_chunk_is_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = FakeProvider([[trurn.OverloadedError("busy")], text_reply("ok")])
    result = await trurn.Agent(provider, retry=NO_JITTER).run_turn(trurn.Context(), "x")
    assert result.text == "ok"


async def test_cancelling_during_the_backoff_ends_the_turn_cleanly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = FakeProvider([rate_limited(retry_after=100), [HANG]])
    context = trurn.Context()
    seen: list[events.Event] = []
    with trio.move_on_after(10) as scope:
        await trurn.Agent(provider, retry=NO_JITTER).run_turn(context, "x", on_event=seen.append)
    assert scope.cancelled_caught
    assert len(provider.requests) == 1
    assert [e.__struct_config__.tag for e in seen][-2:] == ["run_aborted", "turn_finished"]


async def test_http_429_with_retry_after_over_real_http(
    autojump_clock: trio.testing.MockClock,
) -> None:
    replies = [
        Reply(fault=StatusError(status=429, message="Rate limit", retry_after=4)),
        Reply("ok"),
    ]
    async with open_scripted_server(replies) as server, httpx.AsyncClient() as client:
        provider = OpenAIChat("m", base_url=server.base_url, client=client)
        start = trio.current_time()
        result = await trurn.run_turn(provider=provider, message="x", retry=NO_JITTER)
    assert result.text == "ok"
    assert trio.current_time() - start == 4.0
    assert len(server.requests) == 2


def test_a_huge_number_of_attempts_does_not_overflow() -> None:
    policy = trurn.RetryPolicy(attempts=10_000, max_delay=30, jitter=0)
    assert retry_delay(policy, 5_000, trurn.ServerError("x")) == 30


@pytest.mark.parametrize("multiplier", [1.5, 1e5, 1e300])
def test_a_huge_multiplier_stops_growing_at_the_maximum(multiplier: float) -> None:
    policy = trurn.RetryPolicy(attempts=100, multiplier=multiplier, max_delay=30, jitter=0)
    delays = [retry_delay(policy, n, trurn.ServerError("x")) for n in (2, 10, 70, 99)]
    assert delays[1:] == [30, 30, 30]
    assert delays[0] == min(30, multiplier)
