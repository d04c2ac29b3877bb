"""Policies: loop detection, the token budget, the per-turn guard, on_limit_reached."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing
from fakes import FakeProvider, tool_reply
from hypothesis import given, settings
from hypothesis import strategies as st

import trurn
from trurn import events
from trurn._messages import AssistantMessage, ToolCall, ToolMessage, Usage
from trurn._policies import (
    CONTINUE,
    DEFAULT_LOOP_DETECTION,
    Loop,
    LoopDetection,
    LoopDetector,
    TurnGuard,
    Verdict,
    call_key,
    check_iteration_policy,
    check_max_turn_tokens,
    continue_answer,
    limit_hook,
    limit_text,
    loop_note,
    loop_stop_text,
    turn_tokens,
    with_note,
)


def call(name: str, **arguments: Any) -> ToolCall:
    return ToolCall(id=f"id_{name}", name=name, arguments=arguments)


def reply(*calls: ToolCall) -> AssistantMessage:
    return AssistantMessage(tool_calls=list(calls), finish_reason="tool_calls")


def periods(calls: Sequence[ToolCall], config: LoopDetection = DEFAULT_LOOP_DETECTION) -> list[int]:
    """The cycle length each call completes (0 for none)."""
    detector = LoopDetector(config)
    found = [detector.observe(c) for c in calls]
    return [len(loop.cycle) if loop else 0 for loop in found]


def naive_period(keys: Sequence[str], repeats: int, max_cycle: int) -> int:
    """The shortest cycle the last calls repeat ``repeats`` times, checked the slow way."""
    for period in range(1, max_cycle + 1):
        window = period * repeats
        if len(keys) >= window:
            tail = keys[-window:]
            if all(tail[i] == tail[i % period] for i in range(window)):
                return period
    return 0


A, B, C, D, E = (call(n, x=1) for n in "abcde")


# ---------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"repeats": 1}, "repeats"),
        ({"repeats": True}, "repeats"),
        ({"repeats": 2.5}, "repeats"),
        ({"max_cycle": 0}, "max_cycle"),
        ({"mode": "warn"}, "mode"),
    ],
)
def test_bad_loop_detection_options_are_refused_by_name(
    options: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=f"LoopDetection.{named}"):
        LoopDetection(**options)


@pytest.mark.parametrize("value", [0, -5, True, 1.5, "100"])
def test_bad_token_budgets_are_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="max_turn_tokens"):
        check_max_turn_tokens(value)
    with pytest.raises(ValueError, match="max_turn_tokens"):
        TurnGuard(max_turn_tokens=value)


def test_good_token_budgets_pass() -> None:
    assert check_max_turn_tokens(None) is None
    assert check_max_turn_tokens(1) == 1


# ---------------------------------------------------------------------------
# What makes two calls the same


def test_call_key_ignores_key_order_at_every_depth() -> None:
    one = call("f", a=1, b={"y": [1, {"q": 1, "p": 2}], "x": None})
    other = call("f", b={"x": None, "y": [1, {"p": 2, "q": 1}]}, a=1)
    assert call_key(one) == call_key(other)


def test_call_key_tells_apart_names_values_and_list_order() -> None:
    keys = {
        call_key(call("f", a=1)),
        call_key(call("g", a=1)),
        call_key(call("f", a=2)),
        call_key(call("f", a="1")),
        call_key(call("f", a=[1, 2])),
        call_key(call("f", a=[2, 1])),
        call_key(call("f")),
    }
    assert len(keys) == 7


def test_call_key_of_unparsed_arguments_is_the_raw_text() -> None:
    def broken(raw: str) -> ToolCall:
        return ToolCall(id="c", name="f", arguments_raw=raw, arguments_error="not JSON")

    assert call_key(broken("{oops")) == call_key(broken("{oops"))
    assert call_key(broken("{oops")) != call_key(broken("{oops!"))
    assert call_key(broken("{}")) != call_key(call("f"))


def test_call_key_survives_arguments_json_cannot_encode() -> None:
    odd = call("f", a=object())
    assert call_key(odd).startswith("f\0repr:")
    assert call_key(call("f", a={1, 2})) == call_key(call("f", a={1, 2}))


# ---------------------------------------------------------------------------
# Loop detector


def test_the_same_call_three_times_is_a_loop_at_the_third() -> None:
    assert periods([A, A, A]) == [0, 0, 1]


def test_the_same_tool_with_other_arguments_is_not_a_loop() -> None:
    assert periods([call("a", x=1), call("a", x=2), call("a", x=3), call("a", x=4)]) == [0] * 4


def test_ids_do_not_matter_only_name_and_arguments() -> None:
    calls = [ToolCall(id=f"c{i}", name="a", arguments={"x": 1}) for i in range(3)]
    assert periods(calls) == [0, 0, 1]


def test_a_cycle_of_two_repeated_three_times_is_a_loop() -> None:
    assert periods([A, B, A, B, A, B]) == [0, 0, 0, 0, 0, 2]
    detector = LoopDetector()
    for c in [A, B, A, B, A]:
        assert detector.observe(c) is None
    assert detector.observe(B) == Loop(cycle=(A, B), repeats=3)


def test_cycles_up_to_max_cycle_are_found_and_longer_ones_are_not() -> None:
    four = [A, B, C, D] * 3
    five = [A, B, C, D, E] * 3
    assert periods(four)[-1] == 4
    assert periods(five) == [0] * 15
    assert periods(five, LoopDetection(max_cycle=5))[-1] == 5


def test_the_shortest_cycle_is_reported() -> None:
    detector = LoopDetector(LoopDetection(repeats=2))
    results = [detector.observe(c) for c in [A, A, A, A]]
    assert [r.cycle if r else None for r in results] == [None, (A,), (A,), (A,)]


def test_a_broken_run_starts_counting_again() -> None:
    assert periods([A, A, B, A, A, C, A, A, A]) == [0, 0, 0, 0, 0, 0, 0, 0, 1]


def test_repeats_is_configurable() -> None:
    assert periods([A] * 5, LoopDetection(repeats=5)) == [0, 0, 0, 0, 1]
    assert periods([A, B, A, B], LoopDetection(repeats=2)) == [0, 0, 0, 2]


def test_max_cycle_one_only_finds_identical_calls() -> None:
    assert periods([A, B] * 4, LoopDetection(max_cycle=1)) == [0] * 8
    assert periods([A] * 3, LoopDetection(max_cycle=1)) == [0, 0, 1]


def test_memory_stays_bounded_on_a_long_turn() -> None:
    detector = LoopDetector()
    for i in range(5000):
        assert detector.observe(call("read", line=i)) is None
    assert len(detector._recent) == 4


# Few names and values, so that repeats and cycles are common in the drawn sequences.
small_calls = st.builds(lambda name, x: call(name, x=x), st.sampled_from("abc"), st.integers(0, 1))


@given(
    st.lists(small_calls, max_size=40),
    st.integers(2, 4),
    st.integers(1, 5),
)
def test_detector_agrees_with_the_slow_check_after_every_call(
    calls: list[ToolCall], repeats: int, max_cycle: int
) -> None:
    config = LoopDetection(repeats=repeats, max_cycle=max_cycle)
    keys = [call_key(c) for c in calls]
    expected = [naive_period(keys[: i + 1], repeats, max_cycle) for i in range(len(calls))]
    assert periods(calls, config) == expected


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers()), unique=True, max_size=60))
def test_all_distinct_calls_are_never_a_loop(pairs: list[tuple[str, int]]) -> None:
    calls = [call(name, n=n) for name, n in pairs]
    assert periods(calls) == [0] * len(calls)
    guard = TurnGuard(loop_detection=LoopDetection(repeats=2))
    assert all(guard.after_reply(reply(c)) == CONTINUE for c in calls)


@given(
    st.lists(small_calls, max_size=10),
    st.lists(st.builds(lambda n: call("t", n=n), st.integers()), min_size=1, max_size=4),
    st.integers(2, 4),
)
def test_a_repeated_cycle_is_always_caught_by_its_last_call(
    prefix: list[ToolCall], cycle: list[ToolCall], repeats: int
) -> None:
    found = periods(prefix + cycle * repeats, LoopDetection(repeats=repeats))
    assert found[-1] != 0
    assert len(cycle) % found[-1] == 0  # the cycle, or a shorter one it is made of


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)


def reorder(value: Any) -> Any:
    """The same JSON value with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {k: reorder(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reorder(v) for v in value]
    return value


@settings(max_examples=60)
@given(st.lists(st.dictionaries(st.text(max_size=3), json_values, max_size=3), max_size=8))
def test_argument_key_order_does_not_change_any_verdict(arguments: list[dict[str, Any]]) -> None:
    as_sent = [ToolCall(id="c", name="f", arguments=a) for a in arguments]
    reordered = [ToolCall(id="c", name="f", arguments=reorder(a)) for a in arguments]
    assert [call_key(c) for c in as_sent] == [call_key(c) for c in reordered]
    config = LoopDetection(repeats=2)
    assert periods(as_sent, config) == periods(reordered, config)


# ---------------------------------------------------------------------------
# Texts for the model


def test_notes_name_the_tools_and_the_count() -> None:
    single = Loop(cycle=(call("get_weather", city="Rome"),), repeats=3)
    cycle = Loop(cycle=(call("read"), call("write")), repeats=4)
    assert "get_weather was called with the same arguments 3 times" in loop_note(single)
    assert "will be stopped" in loop_note(single)
    assert "2 tool calls (read, write) came 4 times" in loop_note(cycle)
    assert loop_stop_text(single).startswith("Not run:")
    assert "get_weather" in loop_stop_text(single)


def test_with_note_appends_to_the_last_result_only() -> None:
    results = [
        ToolMessage(tool_call_id="1", name="a", content="one"),
        ToolMessage(tool_call_id="2", name="b", content="two", status="error"),
    ]
    noted = with_note(results, "NOTE")
    assert noted[0] == results[0]
    assert noted[1].content == "two\n\nNOTE"
    assert (noted[1].tool_call_id, noted[1].status) == ("2", "error")
    assert with_note([], "NOTE") == []


# ---------------------------------------------------------------------------
# Token budget


def test_turn_tokens_falls_back_to_input_plus_output() -> None:
    assert turn_tokens(Usage(input_tokens=10, output_tokens=5, total_tokens=20)) == 20
    assert turn_tokens(Usage(input_tokens=10, output_tokens=5)) == 15
    assert turn_tokens(Usage()) == 0


def test_the_budget_stops_the_next_call_once_reached() -> None:
    guard = TurnGuard(max_turn_tokens=100)
    assert guard.before_request(Usage()) == CONTINUE
    assert guard.before_request(Usage(total_tokens=99)) == CONTINUE
    stop = Verdict(action="stop", stop_reason="budget_exceeded")
    assert guard.before_request(Usage(total_tokens=100)) == stop
    assert guard.before_request(Usage(input_tokens=90, output_tokens=30)) == stop


def test_no_budget_never_stops() -> None:
    assert TurnGuard().before_request(Usage(total_tokens=10**12)) == CONTINUE


# ---------------------------------------------------------------------------
# The per-turn guard


def test_guard_stop_mode_stops_with_loop_detected() -> None:
    guard = TurnGuard(loop_detection=LoopDetection())
    assert guard.after_reply(reply(A)) == CONTINUE
    assert guard.after_reply(reply(A)) == CONTINUE
    verdict = guard.after_reply(reply(A))
    assert verdict.action == "stop"
    assert verdict.stop_reason == "loop_detected"
    assert verdict.note == loop_stop_text(Loop(cycle=(A,), repeats=3))


def test_guard_warns_once_then_stops_at_the_next_repeat() -> None:
    guard = TurnGuard(loop_detection=LoopDetection(mode="warn_then_stop"))
    assert [guard.after_reply(reply(A)).action for _ in range(2)] == ["continue"] * 2
    warned = guard.after_reply(reply(A))
    assert warned == Verdict(action="warn", note=loop_note(Loop(cycle=(A,), repeats=3)))
    assert guard.after_reply(reply(A)).stop_reason == "loop_detected"


def test_guard_after_a_warning_a_later_loop_stops() -> None:
    guard = TurnGuard(loop_detection=LoopDetection(mode="warn_then_stop"))
    verdicts = [guard.after_reply(reply(c)).action for c in [A, A, A, B, C, B, C, B, C]]
    assert verdicts == ["continue", "continue", "warn"] + ["continue"] * 5 + ["stop"]


def test_guard_gives_one_verdict_per_reply() -> None:
    warn_guard = TurnGuard(loop_detection=LoopDetection(mode="warn_then_stop"))
    # Four identical calls in one reply: the model has not been warned yet, so no stop.
    assert warn_guard.after_reply(reply(A, A, A, A)).action == "warn"
    assert warn_guard.after_reply(reply(B)).action == "continue"
    stop_guard = TurnGuard(loop_detection=LoopDetection())
    assert stop_guard.after_reply(reply(A, B)).action == "continue"
    assert stop_guard.after_reply(reply(A, B)).action == "continue"
    assert stop_guard.after_reply(reply(A, B)).action == "stop"


def test_guard_ignores_replies_without_tool_calls() -> None:
    guard = TurnGuard(loop_detection=LoopDetection(repeats=2))
    assert guard.after_reply(reply(A)) == CONTINUE
    assert guard.after_reply(AssistantMessage(content="thinking")) == CONTINUE
    assert guard.after_reply(reply(A)).action == "stop"  # the text did not break the run


def test_guard_without_loop_detection_never_stops_on_calls() -> None:
    guard = TurnGuard()
    assert all(guard.after_reply(reply(A)) == CONTINUE for _ in range(10))


# ---------------------------------------------------------------------------
# The iteration policy's optional on_limit_reached


class OnlyContinue:
    async def should_continue(self, iteration: int, tool_calls: Sequence[ToolCall]) -> bool:
        return True


class WithLimit(OnlyContinue):
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, str]] = []

    async def on_limit_reached(
        self, iteration: int, tool_calls: Sequence[ToolCall], stop_reason: str
    ) -> str | None:
        self.calls.append((iteration, len(tool_calls), stop_reason))
        return f"stopped: {stop_reason}"


async def test_limit_hook_is_optional_and_found_when_defined() -> None:
    assert limit_hook(None) is None
    assert limit_hook(OnlyContinue()) is None
    policy = WithLimit()
    hook = limit_hook(policy)
    assert hook is not None
    assert limit_text(await hook(3, [A], "loop_detected")) == "stopped: loop_detected"
    assert policy.calls == [(3, 1, "loop_detected")]


def test_a_policy_with_a_non_callable_attribute_has_no_hook() -> None:
    class Odd(OnlyContinue):
        on_limit_reached = "not a method"

    assert limit_hook(Odd()) is None


def test_limit_text_accepts_str_or_none_and_names_anything_else() -> None:
    assert limit_text(None) is None
    assert limit_text("done") == "done"
    with pytest.raises(TypeError, match="on_limit_reached must return a str or None, got int"):
        limit_text(3)


def test_continue_answer_accepts_a_bool_and_names_the_policy_otherwise() -> None:
    policy = OnlyContinue()
    assert continue_answer(policy, True) is True
    assert continue_answer(policy, False) is False
    for value, kind in [(None, "NoneType"), ("no", "str"), (0, "int")]:
        with pytest.raises(
            TypeError,
            match=f"iteration policy OnlyContinue: should_continue must return a bool, got {kind}",
        ):
            continue_answer(policy, value)


def test_check_iteration_policy_wants_async_methods() -> None:
    class SyncContinue:
        def should_continue(self, iteration: int, tool_calls: Sequence[ToolCall]) -> bool:
            return True

    class SyncLimit(OnlyContinue):
        def on_limit_reached(
            self, iteration: int, tool_calls: Sequence[ToolCall], stop_reason: str
        ) -> str | None:
            return None

    class NoMethod:
        pass

    assert check_iteration_policy(None) is None
    policy, with_limit = OnlyContinue(), WithLimit()
    assert check_iteration_policy(policy) is policy
    assert check_iteration_policy(with_limit) is with_limit
    with pytest.raises(
        TypeError, match=r"SyncContinue: should_continue\(iteration, tool_calls\) must be an 'async"
    ):
        check_iteration_policy(SyncContinue())
    with pytest.raises(TypeError, match="NoMethod: should_continue"):
        check_iteration_policy(NoMethod())
    with pytest.raises(TypeError, match="SyncLimit: on_limit_reached must be an 'async def'"):
        check_iteration_policy(SyncLimit())
    with pytest.raises(TypeError, match="the class OnlyContinue: pass an instance of it"):
        check_iteration_policy(OnlyContinue)
    # The Agent checks it when it is built, before any turn.
    with pytest.raises(TypeError, match="SyncContinue: should_continue"):
        trurn.Agent(FakeProvider([]), iteration_policy=SyncContinue())  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# The turn today: a max_iterations stop is announced, never silent


async def test_max_iterations_publishes_turn_finished(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def get_weather(city: str) -> str:
        """Weather."""
        return "sunny"

    replies = [tool_reply((f"c{i}", "get_weather", f'{{"city": "C{i}"}}')) for i in range(2)]
    agent = trurn.Agent(FakeProvider(replies), tools=[get_weather], max_steps=2)
    seen: list[events.Event] = []
    result = await agent.run_turn(trurn.Context(), "x", on_event=seen.append)
    assert result.stop_reason == "max_iterations"
    assert isinstance(seen[-1], events.TurnFinished)
    assert seen[-1].stop_reason == "max_iterations"
    assert not any(isinstance(e, events.RunAborted) for e in seen)
