"""The public surface: what ``trurn`` exports is pinned, so changing it is a decision."""

from __future__ import annotations

import trurn
import trurn.events
import trurn.providers
import trurn.testing

PUBLIC = {
    "Agent",
    "PendingCall",
    "get_tool_call_delta",
    "get_tool_call_deltas",
    "ApprovalDecision",
    "ApprovalPolicy",
    "Approver",
    "Chooser",
    "Precheck",
    "open_agent",
    "InvalidChoiceError",
    "RequestAnsweredError",
    "RequestError",
    "UnknownRequestError",
    "Block",
    "Hooks",
    "LimitPolicy",
    "LoopDetection",
    "CompactionPlan",
    "CompactionPolicy",
    "Compactor",
    "ModelSummary",
    "SubagentDepthError",
    "TruncationPolicy",
    "TurnLineage",
    "current_turn",
    "AssistantMessage",
    "AuthenticationError",
    "BadRequestError",
    "BaseTool",
    "Broadcast",
    "BroadcastStatistics",
    "ConfigurationError",
    "Context",
    "ContextOverflowError",
    "FunctionTool",
    "IterationPolicy",
    "MalformedStreamError",
    "Message",
    "NotFoundError",
    "OnEvent",
    "OnProgress",
    "Nucleus",
    "OverloadedError",
    "PermissionDeniedError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderTimeout",
    "RateLimitError",
    "Reducer",
    "RetryPolicy",
    "ServerError",
    "SessionStore",
    "SessionNotFoundError",
    "SessionInfo",
    "SessionExistsError",
    "SessionCorruptError",
    "SessionError",
    "SessionIdError",
    "SessionLockedError",
    "SessionVersionError",
    "SessionWriteError",
    "SubscriberStatistics",
    "SystemMessage",
    "ThinkingBlock",
    "ToolArgumentsError",
    "ToolCall",
    "ToolContext",
    "ToolError",
    "ToolMessage",
    "Transition",
    "TrurnError",
    "TurnResult",
    "Usage",
    "UserMessage",
    "__version__",
    "events",
    "get_last_total_tokens",
    "get_last_usage",
    "providers",
    "run_turn",
    "tool",
}


def test_trurn_all_is_pinned() -> None:
    assert set(trurn.__all__) == PUBLIC
    for name in trurn.__all__:
        assert hasattr(trurn, name), name


def test_design_contract_names_exist() -> None:
    # The names DESIGN.md's "Public API" section promises.
    assert trurn.providers.OpenAIChat
    assert trurn.events.Event
    assert trurn.testing.open_scripted_server
    for name in ("text", "tool_calls", "messages", "usage", "stop_reason"):
        assert name in trurn.TurnResult.__struct_fields__


def test_submodules_list_what_they_export() -> None:
    for module in (trurn.events, trurn.providers, trurn.testing):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_exceptions_form_one_tree() -> None:
    for name in trurn.__all__:
        value = getattr(trurn, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, trurn.TrurnError), name
