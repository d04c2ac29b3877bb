"""Serve the benchmark conversation from trurn's scripted server, in a process of its own.

``python benchmarks/_server.py [--chunk-delay SECONDS]`` listens on a free port of
127.0.0.1, prints that port on one line, then serves until its standard input ends:
the benchmark closes it to stop the server, and the system closes it if the benchmark
dies, so the server never outlives it. Running the server apart from the client keeps
its CPU time out of the client's ``process_time()``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import trio
from _scenario import (
    ARGUMENT_CHUNKS,
    FINAL_TEXT,
    FINAL_TEXT_CHUNKS,
    TOOL_KEYS,
    TOOL_NAME,
)

from trurn.testing import ChatRequest, Reply, ScriptedToolCall, serve_scripted_server


def make_script(chunk_delay: float) -> Callable[[ChatRequest], Reply]:
    """The model's side of the conversation: tool call, tool call, final text.

    The reply depends only on how many tool results the request carries, so any number
    of turns can run at once on one server.
    """

    def script(request: ChatRequest) -> Reply:
        answered = sum(1 for message in request.messages if message.role == "tool")
        if answered < len(TOOL_KEYS):
            call = ScriptedToolCall(TOOL_NAME, {"key": TOOL_KEYS[answered]}, chunks=ARGUMENT_CHUNKS)
            return Reply(tool_calls=[call], chunk_delay=chunk_delay)
        return Reply(FINAL_TEXT, text_chunks=FINAL_TEXT_CHUNKS, chunk_delay=chunk_delay)

    return script


async def serve(chunk_delay: float) -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_scripted_server, make_script(chunk_delay))
        print(server.port, flush=True)
        # Blocks in a worker thread until end of file; nothing is expected on stdin.
        await trio.to_thread.run_sync(sys.stdin.buffer.read, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds before each chunk")
    args = parser.parse_args()
    try:
        trio.run(serve, args.chunk_delay)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
