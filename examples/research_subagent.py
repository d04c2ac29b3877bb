"""A subagent: the writer's ``research`` tool runs a whole turn of a research agent.

Run it with ``python examples/research_subagent.py``. The writer asks for two topics
at once, so two research turns run side by side, each inside the writer's turn (in
its nursery: cancelling the writer would cancel them). Every turn knows where it sits:
``turn_started`` carries its parent, its root, its depth and the chain of turn ids
from the root, and a tool can ask for its own turn with ``trurn.current_turn()``.

Both agents talk to trurn's scripted OpenAI-compatible server on 127.0.0.1, whose
model below plays the writer and the researcher (it tells them apart by their system
prompts), so the example needs no network and no API key.
"""

import trio

import trurn
from trurn import events
from trurn.providers import OpenAIChat
from trurn.testing import ChatRequest, Reply, ScriptedToolCall, open_scripted_server

WRITER = "You are a writer. Research each topic with the research tool, then sum up."
RESEARCHER = "You are a researcher. Search once, then report what you found in one sentence."
TOPICS = ["trio", "msgspec"]
CANNED = {
    "trio": "Trio runs async Python code in nurseries, so no task outlives its parent.",
    "msgspec": "msgspec decodes JSON straight into typed structs, and validates as it goes.",
}


def model(request: ChatRequest) -> Reply:
    """The scripted model: one policy for the researcher, one for the writer."""
    system = request.messages[0].text if request.messages[0].role == "system" else ""
    last = request.messages[-1]
    if system == RESEARCHER:
        if last.role == "user":
            return Reply(tool_calls=[ScriptedToolCall("search", {"query": last.text})])
        return Reply(f"Found: {last.text}", text_chunks=3)
    if last.role == "user":
        calls = [ScriptedToolCall("research", {"topic": topic}) for topic in TOPICS]
        return Reply("Let me research both topics.", tool_calls=calls)
    findings = [message.text for message in request.messages if message.role == "tool"]
    return Reply("In short: " + " ".join(findings), text_chunks=4)


@trurn.tool
async def search(query: str) -> str:
    """Search the web (here: a canned answer per query)."""
    return CANNED.get(query, f"nothing found about {query!r}")


class LineagePrinter:
    """An ``on_event`` callback for every turn: prints each turn's place in the tree
    as it starts, its tool calls and its end, indented by depth."""

    def __init__(self) -> None:
        self.started: dict[str, events.TurnStarted] = {}
        self.finished: dict[str, events.TurnFinished] = {}

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, events.TurnStarted):
            self.started[event.turn_id] = event
        # Each line starts with its turn's id: the research turns run at the same time,
        # so their lines interleave.
        line = "    " * self.started[event.turn_id].depth + event.turn_id
        if isinstance(event, events.TurnStarted):
            print(f"{line} started: {event.input!r}")
            print(
                f"{line}   depth {event.depth}, parent {event.parent_turn_id}, "
                f"root {event.root_turn_id}"
            )
            print(f"{line}   chain {' > '.join(event.chain)}")
        elif isinstance(event, events.ToolCallStarted):
            print(f"{line} calls {event.call.name}({event.call.arguments})")
        elif isinstance(event, events.TurnFinished):
            self.finished[event.turn_id] = event
            print(f"{line} finished ({event.stop_reason}): {event.text!r}")


async def main() -> None:
    printer = LineagePrinter()
    async with (
        open_scripted_server(model) as server,
        OpenAIChat("scripted", base_url=server.base_url) as provider,
    ):
        researcher = trurn.Agent(provider, tools=[search], system=RESEARCHER)
        tool_turns: dict[str, trurn.TurnLineage | None] = {}

        @trurn.tool
        async def research(topic: str) -> str:
            """Ask the research agent about a topic; returns its findings."""
            # The subagent's turn runs here, in this tool's task: it finds its parent
            # through trurn.current_turn(), which is the writer's turn.
            tool_turns[topic] = trurn.current_turn()
            result = await researcher.run_turn(trurn.Context(), topic, on_event=printer)
            return result.text or "no findings"

        writer = trurn.Agent(provider, tools=[research], system=WRITER)
        result = await writer.run_turn(
            trurn.Context(), "Write a note on trio and msgspec.", on_event=printer
        )
    print()
    print("final answer:", result.text)

    # What the output shows, checked, so CI notices if it stops being true.
    assert result.stop_reason == "completed"
    assert result.text == "In short: " + " ".join(f"Found: {CANNED[t]}" for t in TOPICS)
    top = printer.started[result.turn_id]
    assert (top.depth, top.parent_turn_id, top.chain) == (0, None, [result.turn_id])
    children = [s for s in printer.started.values() if s.turn_id != result.turn_id]
    assert sorted(child.input for child in children) == sorted(TOPICS)
    for child in children:
        assert child.parent_turn_id == result.turn_id
        assert child.root_turn_id == result.turn_id
        assert (child.depth, child.chain) == (1, [result.turn_id, child.turn_id])
        assert printer.finished[child.turn_id].stop_reason == "completed"
    # Inside the tool, the current turn is the writer's.
    assert {lineage.turn_id for lineage in tool_turns.values() if lineage} == {result.turn_id}
    assert len(tool_turns) == len(TOPICS)


if __name__ == "__main__":
    trio.run(main)
