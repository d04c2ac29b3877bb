"""Compaction inside the turn: the threshold, the context-overflow retry, the summariser,
the marker in the session file, and what the model is sent afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from fakes import HANG, FakeProvider, text_reply, tool_reply

import trurn
from trurn import events
from trurn._chunks import Finish, TextDelta
from trurn._compaction import (
    SUMMARY_HEADER,
    SUMMARY_INSTRUCTION,
    CompactionPlan,
    Compactor,
    ModelSummary,
    TruncationPolicy,
)
from trurn._journal import read_journal
from trurn._messages import AssistantMessage, ToolMessage, Usage, UserMessage
from trurn._records import Compaction


class RecordingPolicy:
    """Summarises as ``summary N`` and keeps every plan it was given."""

    def __init__(self) -> None:
        self.plans: list[CompactionPlan] = []

    async def summarise(self, plan: CompactionPlan) -> str:
        await trio.lowlevel.checkpoint()
        self.plans.append(plan)
        return f"summary {len(self.plans)}"


class FailingPolicy:
    async def summarise(self, plan: CompactionPlan) -> str:
        await trio.lowlevel.checkpoint()
        raise RuntimeError("summariser broke")


class HangingPolicy:
    started = False

    async def summarise(self, plan: CompactionPlan) -> str:
        self.started = True
        await trio.sleep_forever()
        raise AssertionError("unreachable")


def overflow() -> trurn.ContextOverflowError:
    return trurn.ContextOverflowError("prompt is too long", status_code=400, provider="fake")


def long_history(turns: int) -> list[trurn.Message]:
    history: list[trurn.Message] = []
    for number in range(turns):
        history.append(UserMessage(f"question {number} " + "x" * 400))
        history.append(AssistantMessage(content=f"answer {number} " + "y" * 400))
    return history


def sent_first(provider: FakeProvider, request: int) -> str:
    first = provider.requests[request].messages[0]
    assert isinstance(first, UserMessage)
    return first.content


async def collect(agent: trurn.Agent, context: trurn.Context, message: str) -> list[events.Event]:
    seen: list[events.Event] = []
    await agent.run_turn(context, message, on_event=seen.append)
    return seen


# --- the threshold ----------------------------------------------------------------------


async def test_over_threshold_the_history_is_summarised_before_the_request() -> None:
    provider = FakeProvider([text_reply("fine")])
    policy = RecordingPolicy()
    agent = trurn.Agent(provider, compaction=Compactor(threshold=500, policy=policy, keep_recent=1))
    context = trurn.Context(messages=long_history(4))
    seen = await collect(agent, context, "and now?")

    [plan] = policy.plans
    assert plan.first_kept == 8  # the latest user message and what follows are kept
    assert len(plan.to_summarise) == 8
    assert plan.user_intent == "and now?"
    started = [e for e in seen if isinstance(e, events.CompactionStarted)]
    done = [e for e in seen if isinstance(e, events.Compacted)]
    assert [e.reason for e in started] == ["threshold"]
    assert started[0].estimated_tokens > 500
    assert [(e.summary, e.first_kept, e.summarised) for e in done] == [("summary 1", 8, 8)]
    # The model is sent the summary (with the intent folded in) instead of the old part...
    [request] = provider.requests
    assert len(request.messages) == 1
    assert sent_first(provider, 0).startswith(SUMMARY_HEADER)
    assert "summary 1" in sent_first(provider, 0)
    assert sent_first(provider, 0).endswith("and now?")
    # ... and nothing is deleted from the history.
    assert len(context.messages) == 10
    assert context.compaction is not None
    assert context.compaction.first_kept == 8


async def test_under_threshold_nothing_is_compacted() -> None:
    provider = FakeProvider([text_reply("fine")])
    policy = RecordingPolicy()
    agent = trurn.Agent(provider, compaction=Compactor(threshold=100_000, policy=policy))
    context = trurn.Context(messages=long_history(4))
    seen = await collect(agent, context, "and now?")
    assert policy.plans == []
    assert not any(isinstance(e, (events.CompactionStarted, events.Compacted)) for e in seen)
    assert len(provider.requests[0].messages) == 9


async def test_usage_from_before_a_compaction_does_not_trigger_another_one() -> None:
    # The kept assistant message reported a huge usage; after the compaction that usage
    # measures a prompt that is no longer sent, so the next step must not compact again.
    history = long_history(3)
    history.append(UserMessage("run the tool"))
    history.append(
        AssistantMessage(
            content="ok", usage=Usage(input_tokens=90_000, output_tokens=10, total_tokens=90_010)
        )
    )
    provider = FakeProvider([tool_reply(("c1", "echo", '{"text": "hi"}')), text_reply("done")])

    @trurn.tool
    async def echo(text: str) -> str:
        """Echo."""
        return text

    policy = RecordingPolicy()
    agent = trurn.Agent(
        provider,
        tools=[echo],
        compaction=Compactor(threshold=50_000, policy=policy, keep_recent=2),
    )
    context = trurn.Context(messages=history)
    await agent.run_turn(context, "again")
    assert len(policy.plans) == 1
    assert len(provider.requests) == 2


async def test_a_second_compaction_folds_in_the_first() -> None:
    provider = FakeProvider([text_reply("one " + "z" * 2000), text_reply("two")])
    policy = RecordingPolicy()
    agent = trurn.Agent(provider, compaction=Compactor(threshold=400, policy=policy, keep_recent=1))
    context = trurn.Context(messages=long_history(3))
    await agent.run_turn(context, "first")
    await agent.run_turn(context, "second")
    assert [plan.previous_summary for plan in policy.plans] == [None, "summary 1"]
    assert policy.plans[1].to_summarise[0] == UserMessage("first")
    assert "summary 2" in sent_first(provider, 1)


# --- context overflow ---------------------------------------------------------------------


async def test_a_context_overflow_is_compacted_and_sent_again() -> None:
    provider = FakeProvider([overflow(), text_reply("fits now")])
    policy = RecordingPolicy()
    agent = trurn.Agent(provider, compaction=Compactor(policy=policy, keep_recent=0))
    context = trurn.Context(messages=long_history(3))
    seen = await collect(agent, context, "go")
    assert [e.reason for e in seen if isinstance(e, events.CompactionStarted)] == ["overflow"]
    assert len(provider.requests) == 2
    assert len(provider.requests[0].messages) == 7
    assert len(provider.requests[1].messages) == 1
    last = context.messages[-1]
    assert isinstance(last, AssistantMessage)
    assert last.content == "fits now"


async def test_an_overflow_with_nothing_to_compact_is_raised() -> None:
    provider = FakeProvider([overflow()])
    agent = trurn.Agent(provider, compaction=Compactor(policy=RecordingPolicy()))
    with pytest.raises(trurn.ContextOverflowError):
        await agent.run_turn(trurn.Context(), "hello")


async def test_an_overflow_after_compacting_is_raised() -> None:
    provider = FakeProvider([overflow(), overflow()])
    policy = RecordingPolicy()
    agent = trurn.Agent(provider, compaction=Compactor(policy=policy, keep_recent=0))
    context = trurn.Context(messages=long_history(3))
    with pytest.raises(trurn.ContextOverflowError):
        await agent.run_turn(context, "go")
    assert len(policy.plans) == 1
    assert len(provider.requests) == 2


async def test_without_compaction_an_overflow_is_raised() -> None:
    provider = FakeProvider([overflow()])
    agent = trurn.Agent(provider, compaction=None)
    with pytest.raises(trurn.ContextOverflowError):
        await agent.run_turn(trurn.Context(messages=long_history(3)), "go")
    assert len(provider.requests) == 1


# --- the summariser ---------------------------------------------------------------------


async def test_the_default_policy_asks_the_agents_model_for_a_summary() -> None:
    summary = [[TextDelta("The user asked "), TextDelta("questions.")], [Finish("stop")]]
    provider = FakeProvider([overflow(), summary, text_reply("answer")])

    @trurn.tool
    async def noop() -> str:
        """Nothing."""
        return ""

    agent = trurn.Agent(provider, tools=[noop], system="be brief")
    context = trurn.Context(messages=long_history(5))
    result = await agent.run_turn(context, "go")
    assert result.text == "answer"
    summary_request = provider.requests[1]
    assert summary_request.tools == ()
    [asked] = summary_request.messages
    assert isinstance(asked, UserMessage)
    assert asked.content.startswith(SUMMARY_INSTRUCTION)
    assert "question 0" in asked.content
    retried = provider.requests[2]
    assert isinstance(retried.messages[0], trurn.SystemMessage)  # the system prompt survives
    assert "The user asked questions." in retried.messages[1].content  # type: ignore[union-attr]


async def test_model_summary_refuses_an_empty_summary() -> None:
    provider = FakeProvider([text_reply("   ")])
    plan = CompactionPlan(first_kept=2, to_summarise=long_history(1))
    with pytest.raises(ValueError, match="empty summary"):
        await ModelSummary(provider).summarise(plan)


async def test_a_failing_summariser_is_reported_and_the_turn_goes_on() -> None:
    provider = FakeProvider([text_reply("still fine")])
    agent = trurn.Agent(
        provider, compaction=Compactor(threshold=100, policy=FailingPolicy(), keep_recent=0)
    )
    context = trurn.Context(messages=long_history(3))
    seen = await collect(agent, context, "go")
    errors = [e for e in seen if isinstance(e, events.Error)]
    assert [e.error_type for e in errors] == ["RuntimeError"]
    assert "compaction failed" in errors[0].message
    assert context.compaction is None
    assert len(provider.requests[0].messages) == 7
    assert isinstance(seen[-1], events.TurnFinished)
    assert seen[-1].stop_reason == "completed"


async def test_truncation_policy_needs_no_model() -> None:
    provider = FakeProvider([text_reply("ok")])
    agent = trurn.Agent(
        provider, compaction=Compactor(threshold=100, policy=TruncationPolicy(), keep_recent=0)
    )
    context = trurn.Context(messages=long_history(2))
    await agent.run_turn(context, "go")
    assert len(provider.requests) == 1
    assert "4 earlier messages were removed" in sent_first(provider, 0)


async def test_cancelling_a_summary_leaves_no_marker_and_a_valid_history(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = FakeProvider([])
    policy = HangingPolicy()
    agent = trurn.Agent(provider, compaction=Compactor(threshold=100, policy=policy, keep_recent=0))
    context = trurn.Context(messages=long_history(3))
    with trio.move_on_after(1) as scope:
        await agent.run_turn(context, "go")
    assert scope.cancelled_caught
    assert policy.started
    assert context.compaction is None
    assert context.messages[-1] == UserMessage("go")


def test_compactor_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="threshold"):
        Compactor(threshold=0)
    with pytest.raises(ValueError, match="keep_recent"):
        Compactor(keep_recent=-1)
    with pytest.raises(ValueError, match="chars_per_token"):
        Compactor(chars_per_token=0)


# --- the session file -------------------------------------------------------------------


async def test_the_marker_is_written_and_restored_without_deleting_anything(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.jsonl"
    provider = FakeProvider([text_reply("a " + "w" * 900), text_reply("b"), text_reply("c")])
    policy = RecordingPolicy()
    agent = trurn.Agent(provider, compaction=Compactor(threshold=150, policy=policy, keep_recent=1))
    async with trurn.Context(path) as context:
        await agent.run_turn(context, "first " + "v" * 600)
        await agent.run_turn(context, "second")
        sent_before = context.prompt_messages()
    contents = await read_journal(path)
    markers = [r for r in contents.records if isinstance(r, Compaction)]
    assert [m.summary for m in markers] == ["summary 1"]
    async with trurn.Context(path) as restored:
        assert len(restored.messages) == 4  # every message is still in the file
        assert restored.compaction == markers[0]
        assert restored.prompt_messages() == sent_before
        await agent.run_turn(restored, "third")
    assert sent_first(provider, 2).startswith(SUMMARY_HEADER)


async def test_a_cancel_mid_stream_after_a_compaction_keeps_the_marker(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    provider = FakeProvider([[[TextDelta("partial")], HANG]])
    agent = trurn.Agent(
        provider, compaction=Compactor(threshold=100, policy=RecordingPolicy(), keep_recent=0)
    )
    # Cancelled once the text arrived (not by a clock: the file writes run in threads).
    with trio.CancelScope() as scope:

        def cancel_on_text(event: events.Event) -> None:
            if isinstance(event, events.AssistantDelta):
                scope.cancel()

        async with trurn.Context(path, messages=()) as context:
            context.extend(long_history(2))
            await context.flush()
            await agent.run_turn(context, "go", on_event=cancel_on_text)
    assert scope.cancelled_caught
    async with trurn.Context(path) as restored:
        assert restored.compaction is not None
        assert restored.messages[-1] == AssistantMessage(content="partial", aborted=True)
        assert not any(isinstance(m, ToolMessage) for m in restored.messages)
