"""A person approves what the agent's tools may do, from the terminal.

The scripted model asks to write a file and to delete one. ``write_file`` needs
approval (``require_approval={"write_file"}``): the terminal shows its preview and asks.
``delete_file`` has its own precheck, which refuses paths outside the project without
asking anyone. Every refusal becomes a result the model reads, and the turn goes on.

The prompt is a UI task that reads the agent's events and answers with
``agent.respond`` (an ``approver=`` callback would answer the same requests in-process).

    python examples/approval_demo.py          # asks y/n for each approval
    python examples/approval_demo.py --yes    # approves everything (for CI)

Without ``--yes`` and without a terminal to ask on (stdin closed), it denies.
No file is touched: the tools only pretend.
"""

import argparse

import trio

import trurn
from trurn import events
from trurn.providers import OpenAIChat
from trurn.testing import ChatRequest, Reply, ScriptedToolCall, open_scripted_server


def describe_write(path: str, text: str) -> str:
    return f"write {len(text)} characters to {path}"


@trurn.tool(preview=describe_write)
async def write_file(path: str, text: str) -> str:
    """Write text to a file in the project."""
    return f"wrote {len(text)} characters to {path} (pretend)"


def outside_project(path: str) -> trurn.Precheck:
    if path.startswith("/") or ".." in path.split("/"):
        return trurn.Precheck(
            status="deny", message=f"{path} is outside the project", reasons=["absolute path"]
        )
    return trurn.Precheck(status="allow")


@trurn.tool(precheck=outside_project)
async def delete_file(path: str) -> str:
    """Delete a file in the project."""
    return f"deleted {path} (pretend)"


def model(request: ChatRequest) -> Reply:
    """Ask for both tools, then report what their results said."""
    if request.messages[-1].role == "user":
        return Reply(
            "Let me tidy up.",
            tool_calls=[
                ScriptedToolCall("write_file", {"path": "notes.txt", "text": "buy milk"}),
                ScriptedToolCall("delete_file", {"path": "/etc/hosts"}),
            ],
        )
    results = [m.text for m in request.messages if m.role == "tool"]
    return Reply("Here is what happened:\n" + "\n".join(f"- {r}" for r in results))


async def ask(question: str) -> bool:
    """A y/n answer from the terminal; no terminal (EOF) means no."""
    try:
        answer = await trio.to_thread.run_sync(input, question, abandon_on_cancel=True)
    except EOFError:
        print("(no terminal: denied)")
        return False
    return answer.strip().lower() in ("y", "yes")


async def terminal_ui(
    agent: trurn.Agent, stream: trio.MemoryReceiveChannel[events.Event], approve_all: bool
) -> None:
    async for event in stream:
        if isinstance(event, events.ApprovalRequest):
            print(f"\n[approval] {event.call.name}: {event.preview or event.call.arguments}")
            approved = approve_all or await ask("Allow it? [y/N] ")
            agent.respond(
                event.request_id, approved, reason=None if approved else "the user said no"
            )
        elif isinstance(event, events.ApprovalAnswered):
            print(f"[approval] {'approved' if event.approved else 'denied'} (by {event.by})")
        elif isinstance(event, events.ToolExit):
            print(f"[tool] {event.name} -> {event.status}: {event.content}")
        elif isinstance(event, events.AssistantFinal) and not event.message.tool_calls:
            print(f"\n{event.text}")


async def main(approve_all: bool) -> list[str]:
    async with (
        open_scripted_server(model) as server,
        OpenAIChat("scripted", base_url=server.base_url) as provider,
    ):
        agent = trurn.Agent(
            provider, tools=[write_file, delete_file], require_approval={"write_file"}
        )
        async with trio.open_nursery() as nursery, agent.subscribe() as stream:
            nursery.start_soon(terminal_ui, agent, stream, approve_all)
            result = await agent.run_turn(trurn.Context(), "Tidy up my project.")
            await trio.sleep(0.1)  # let the UI print the last events, then stop it
            nursery.cancel_scope.cancel()
    return [m.status for m in result.messages if isinstance(m, trurn.ToolMessage)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--yes", action="store_true", help="approve every request")
    options = parser.parse_args()
    statuses = trio.run(main, options.yes)
    # delete_file is always refused by its precheck; write_file runs only if approved.
    assert statuses[1] == "denied", statuses
    if options.yes:
        assert statuses == ["ok", "denied"], statuses
