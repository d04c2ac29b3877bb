"""Compaction's pure part: token estimate, where to cut, what is sent, summary requests."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trurn._compaction import (
    SUMMARY_HEADER,
    CompactionPlan,
    CompactionPolicy,
    TruncationPolicy,
    estimate_tokens,
    message_chars,
    plan_compaction,
    prompt_messages,
    summary_request,
    truncation_note,
)
from trurn._messages import (
    AssistantMessage,
    Message,
    ThinkingBlock,
    ToolCall,
    ToolMessage,
    Usage,
    UserMessage,
)
from trurn._records import Compaction

_ids = itertools.count()


def user(text: str = "hello") -> UserMessage:
    return UserMessage(text)


def reply(text: str = "ok", usage: Usage | None = None) -> AssistantMessage:
    return AssistantMessage(content=text, usage=usage)


def tool_turn(*names: str) -> list[Message]:
    """An assistant message calling ``names`` in parallel, then their results."""
    calls = [
        ToolCall(id=f"call_{next(_ids)}", name=name, arguments={"q": name}, arguments_raw="{}")
        for name in names
    ]
    results: list[Message] = [
        ToolMessage(tool_call_id=call.id, name=call.name, content=f"result of {call.name}")
        for call in calls
    ]
    return [AssistantMessage(tool_calls=calls), *results]


def assert_valid(messages: Sequence[Message]) -> None:
    """What every provider accepts: starts with a user message, and every tool call
    is answered right after it, by results that all belong to it."""
    assert messages, "empty prompt"
    assert isinstance(messages[0], UserMessage), f"starts with {messages[0]!r}"
    index = 0
    while index < len(messages):
        message = messages[index]
        assert not isinstance(message, ToolMessage), f"tool result without its call at {index}"
        index += 1
        if isinstance(message, AssistantMessage) and message.tool_calls:
            wanted = {call.id for call in message.tool_calls}
            answered: set[str] = set()
            while index < len(messages) and isinstance(messages[index], ToolMessage):
                result = messages[index]
                assert isinstance(result, ToolMessage)
                assert result.tool_call_id in wanted, f"result {result.tool_call_id} not called"
                answered.add(result.tool_call_id)
                index += 1
            assert answered == wanted, f"unanswered calls {wanted - answered}"


def pair_sides(messages: Sequence[Message], first_kept: int) -> None:
    """No tool call and its result are on different sides of ``first_kept``."""
    before = {
        call.id
        for message in messages[:first_kept]
        if isinstance(message, AssistantMessage)
        for call in message.tool_calls
    }
    for message in messages[first_kept:]:
        if isinstance(message, ToolMessage):
            assert message.tool_call_id not in before, f"pair split at {first_kept}"


HISTORIES: dict[str, list[Message]] = {
    "chat": [user("a"), reply(), user("b"), reply(), user("c"), reply(), user("d"), reply()],
    "tools every turn": [
        user("a"),
        *tool_turn("read"),
        reply(),
        user("b"),
        *tool_turn("grep", "read"),
        *tool_turn("edit"),
        reply(),
        user("c"),
        *tool_turn("run", "run", "run"),
        reply(),
    ],
    "long current turn": [
        user("a"),
        reply(),
        user("b"),
        *tool_turn("x"),
        *tool_turn("y", "z"),
        *tool_turn("w"),
        *tool_turn("v"),
        reply(),
    ],
    "ends on tool results": [
        user("a"),
        *tool_turn("x", "y"),
        *tool_turn("z"),
        user("b"),
        *tool_turn("q", "r", "s"),
    ],
    "results before last user": [
        user("a"),
        *tool_turn("x"),
        *tool_turn("y", "z", "w", "u"),
        user("b"),
        reply(),
    ],
}


# --- estimate_tokens ---------------------------------------------------------------------


def test_estimate_without_usage_counts_every_character() -> None:
    calls = [ToolCall(id="c1", name="grep", arguments_raw='{"q":"x"}')]
    messages: list[Message] = [
        user("x" * 40),
        AssistantMessage(content="y" * 8, tool_calls=calls, thinking=[ThinkingBlock(text="t" * 4)]),
        ToolMessage(tool_call_id="c1", name="grep", content="z" * 20),
    ]
    chars = 40 + 8 + 4 + len("grep") + len('{"q":"x"}') + 20
    assert sum(message_chars(m) for m in messages) == chars
    assert estimate_tokens(messages) == -(-chars // 4)
    assert estimate_tokens(messages, chars_per_token=1.0) == chars


def test_estimate_uses_json_of_arguments_when_raw_text_is_empty() -> None:
    call = ToolCall(id="c1", name="f", arguments={"a": 1})
    assert message_chars(AssistantMessage(tool_calls=[call])) == len("f") + len('{"a":1}')


def test_estimate_with_usage_counts_only_messages_after_the_reply_that_reported_it() -> None:
    usage = Usage(input_tokens=1000, output_tokens=200, total_tokens=1200)
    messages: list[Message] = [
        user("x" * 4000),  # covered by the usage, not counted again
        reply("y" * 400, usage=usage),
        *tool_turn("read"),  # after the reply that reported: no usage, so counted
        user("z" * 400),
    ]
    after = sum(message_chars(m) for m in messages[2:])
    assert estimate_tokens(messages, last_usage=usage) == 1200 + -(-after // 4)
    # Without usage everything counts from its characters.
    assert estimate_tokens(messages) == -(-sum(message_chars(m) for m in messages) // 4)


def test_estimate_ignores_usage_when_no_reply_reported_one() -> None:
    usage = Usage(input_tokens=10_000)
    messages: list[Message] = [user("x" * 40), reply("y" * 40)]
    assert estimate_tokens(messages, last_usage=usage) == 20


def test_estimate_rejects_a_non_positive_ratio() -> None:
    with pytest.raises(ValueError, match="chars_per_token"):
        estimate_tokens([user()], chars_per_token=0)


# --- plan_compaction ---------------------------------------------------------------------


@pytest.mark.parametrize("name", HISTORIES)
@pytest.mark.parametrize("keep_recent", [0, 1, 2, 3, 5, 8, 100])
def test_plan_keeps_pairs_latest_user_and_recent(name: str, keep_recent: int) -> None:
    messages = HISTORIES[name]
    plan = plan_compaction(messages, keep_recent=keep_recent)
    if plan is None:
        return
    latest_user = max(i for i, m in enumerate(messages) if isinstance(m, UserMessage))
    assert plan.first_kept <= latest_user
    assert len(messages) - plan.first_kept >= keep_recent
    assert plan.to_summarise == messages[: plan.first_kept]
    assert len(plan.to_summarise) >= 2
    assert plan.user_intent == messages[latest_user].content
    assert not isinstance(messages[plan.first_kept], ToolMessage)
    pair_sides(messages, plan.first_kept)


def test_plan_cuts_as_late_as_the_rules_allow() -> None:
    messages = HISTORIES["chat"]  # u a u a u a u a
    assert plan_compaction(messages, keep_recent=0) == CompactionPlan(
        first_kept=6, to_summarise=messages[:6], user_intent="d"
    )
    plan = plan_compaction(messages, keep_recent=4)
    assert plan is not None
    assert plan.first_kept == 4


def test_plan_moves_a_cut_off_tool_results_to_their_call() -> None:
    messages = HISTORIES["results before last user"]  # u A T A T T T T u a
    # len - keep_recent = 10 - 4 = 6 falls on a result; the call is at 3.
    plan = plan_compaction(messages, keep_recent=4)
    assert plan is not None
    assert plan.first_kept == 3
    assert isinstance(messages[3], AssistantMessage)


def test_plan_keeps_a_long_current_turn_whole() -> None:
    messages = HISTORIES["long current turn"]
    plan = plan_compaction(messages, keep_recent=0)
    assert plan is not None
    assert plan.first_kept == 2  # the latest user message
    assert plan.user_intent == "b"


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [user()],
        [user(), reply()],
        [user("a"), user("b"), reply()],  # one message before the cut: not worth it
        [reply(), reply(), reply()],  # no user message: no intent to keep
        [user("a"), *tool_turn("x", "y", "z")],  # everything is the current turn
    ],
)
def test_plan_is_none_when_nothing_is_worth_summarising(messages: list[Message]) -> None:
    assert plan_compaction(messages, keep_recent=0) is None


def test_plan_folds_in_the_previous_compaction() -> None:
    messages = HISTORIES["chat"]
    previous = Compaction(summary="earlier stuff", first_kept=2)
    plan = plan_compaction(messages, keep_recent=0, previous=previous)
    assert plan is not None
    assert plan.first_kept == 6
    assert plan.to_summarise == messages[2:6]
    assert plan.previous_summary == "earlier stuff"
    # Nothing new past the previous cut: nothing to do.
    assert (
        plan_compaction(messages, keep_recent=0, previous=Compaction(summary="s", first_kept=5))
        is None
    )


def test_plan_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="keep_recent"):
        plan_compaction([user()], keep_recent=-1)
    with pytest.raises(ValueError, match="first_kept"):
        plan_compaction([user()], previous=Compaction(summary="s", first_kept=5))


# --- prompt_messages ---------------------------------------------------------------------


def test_prompt_without_compaction_is_the_history() -> None:
    messages = HISTORIES["tools every turn"]
    assert prompt_messages(messages, None) == messages


def test_prompt_puts_the_summary_and_intent_in_front_of_a_kept_user_message() -> None:
    messages = HISTORIES["chat"]
    compaction = Compaction(summary="they said a, b, c", user_intent="d", first_kept=6)
    sent = prompt_messages(messages, compaction)
    assert len(sent) == 2
    first = sent[0]
    assert isinstance(first, UserMessage)
    assert first.content.startswith(SUMMARY_HEADER)
    assert "they said a, b, c" in first.content
    assert "request when this summary was written:\nd" in first.content
    assert first.content.endswith("\n\nd")  # the kept user message's text comes last
    assert sent[1:] == messages[7:]


def test_prompt_starts_with_a_summary_message_before_a_kept_assistant_message() -> None:
    messages = HISTORIES["results before last user"]
    sent = prompt_messages(messages, Compaction(summary="s", first_kept=3))
    assert isinstance(sent[0], UserMessage)
    assert sent[0].content.startswith(SUMMARY_HEADER)
    assert sent[1:] == messages[3:]
    assert_valid(sent)


def test_prompt_never_keeps_a_result_without_its_call() -> None:
    messages = HISTORIES["results before last user"]  # u A T A T T T T u a
    # A cut on a result moves back to the call that produced it.
    sent = prompt_messages(messages, Compaction(summary="s", first_kept=5))
    assert sent[1:] == messages[3:]
    # Results with no call before them at all are dropped.
    orphans: list[Message] = [ToolMessage(tool_call_id="gone", name="x", content="r"), user()]
    assert prompt_messages(orphans, Compaction(summary="s", first_kept=0))[1:] == []


def test_prompt_with_everything_summarised_is_the_summary_alone() -> None:
    messages = HISTORIES["chat"]
    sent = prompt_messages(messages, Compaction(summary="all of it", first_kept=len(messages)))
    assert len(sent) == 1
    assert_valid(sent)


def test_prompt_rejects_a_cut_past_the_end() -> None:
    with pytest.raises(ValueError, match="first_kept"):
        prompt_messages([user()], Compaction(summary="s", first_kept=2))


@pytest.mark.parametrize("name", HISTORIES)
def test_prompt_is_valid_for_every_cut(name: str) -> None:
    messages = HISTORIES[name]
    for first_kept in range(len(messages) + 1):
        assert_valid(prompt_messages(messages, Compaction(summary="s", first_kept=first_kept)))
    for keep_recent in range(len(messages) + 2):
        plan = plan_compaction(messages, keep_recent=keep_recent)
        if plan is not None:
            sent = prompt_messages(messages, Compaction(summary="s", first_kept=plan.first_kept))
            assert_valid(sent)
            assert sent[-len(messages) + plan.first_kept + 1 :] == messages[plan.first_kept + 1 :]


def test_assert_valid_catches_broken_histories() -> None:
    broken: list[list[Message]] = [
        [reply()],
        [user(), ToolMessage(tool_call_id="x", name="x", content="r")],
        [user(), *tool_turn("a", "b")[:2]],  # one call unanswered
        [user(), *tool_turn("a")[:1], user()],
    ]
    for messages in broken:
        with pytest.raises(AssertionError):
            assert_valid(messages)


turns = st.one_of(
    st.builds(lambda: [user()]),
    st.builds(lambda: [reply()]),
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3).map(
        lambda names: tool_turn(*names)
    ),
)


@given(
    st.lists(turns, max_size=12).map(lambda parts: [user(), *itertools.chain(*parts)]),
    st.integers(min_value=0, max_value=20),
)
def test_planned_prompts_are_valid_for_generated_histories(
    messages: list[Message], keep_recent: int
) -> None:
    assert_valid(messages)  # the generator makes provider-valid histories
    plan = plan_compaction(messages, keep_recent=keep_recent)
    if plan is not None:
        pair_sides(messages, plan.first_kept)
        sent = prompt_messages(messages, Compaction(summary="s", first_kept=plan.first_kept))
        assert_valid(sent)
        latest_user = max(i for i, m in enumerate(messages) if isinstance(m, UserMessage))
        assert plan.first_kept <= latest_user
    for first_kept in range(len(messages) + 1):
        assert_valid(prompt_messages(messages, Compaction(summary="s", first_kept=first_kept)))


# --- summary_request and policies --------------------------------------------------------


def test_summary_request_renders_tool_calls_as_text() -> None:
    messages = HISTORIES["tools every turn"]
    plan = plan_compaction(messages, keep_recent=0, previous=None)
    assert plan is not None
    request = summary_request(plan)
    assert len(request) == 1
    assert isinstance(request[0], UserMessage)
    assert not any(isinstance(m, (ToolMessage, AssistantMessage)) for m in request)
    text = request[0].content
    assert "[called tool grep with arguments: {}]" in text
    assert "### Result of tool grep\nresult of grep" in text
    assert "The user's current request (kept verbatim after the summary):\nc" in text
    assert text.index("### User\na") < text.index("### User\nb")


def test_summary_request_includes_the_previous_summary_and_clips_long_messages() -> None:
    plan = CompactionPlan(
        first_kept=2,
        to_summarise=[
            user("x" * 50),
            ToolMessage(tool_call_id="c", name="run", content="y" * 50, status="error"),
        ],
        previous_summary="the story so far",
    )
    text = summary_request(plan, max_chars_per_message=10)[0].content
    assert isinstance(text, str)
    assert "the story so far" in text
    assert "x" * 11 not in text
    assert "[... 40 more characters omitted]" in text
    assert "### Result of tool run (error)" in text
    with pytest.raises(ValueError, match="max_chars_per_message"):
        summary_request(plan, max_chars_per_message=0)


def test_truncation_note_says_what_was_dropped() -> None:
    plan = plan_compaction(HISTORIES["tools every turn"], keep_recent=0)
    assert plan is not None
    assert truncation_note(plan) == (
        "11 earlier messages were removed to fit the context window "
        "(2 from the user, 5 from the assistant, 4 tool results from: read, grep, edit)."
    )
    one = CompactionPlan(first_kept=1, to_summarise=[user()], previous_summary="before")
    assert truncation_note(one) == (
        "before\n\n1 earlier message was removed to fit the context window "
        "(1 from the user, 0 from the assistant, 0 tool results)."
    )


async def test_truncation_policy_needs_no_model() -> None:
    policy: CompactionPolicy = TruncationPolicy()
    plan = plan_compaction(HISTORIES["chat"], keep_recent=0)
    assert plan is not None
    assert await policy.summarise(plan) == truncation_note(plan)
