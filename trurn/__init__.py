"""trurn: a Trio-native runtime for turn-based LLM agents.

One turn is the user's message, the model's streamed reply, the tool calls it asks
for and their results, until the model answers without tools or a limit stops it.
Every turn runs inside the caller's Trio cancellation tree and publishes typed events.
"""

from . import events as events
from . import providers as providers
from ._agent import Agent as Agent
from ._agent import open_agent as open_agent
from ._agent import run_turn as run_turn
from ._approvals import ApprovalDecision as ApprovalDecision
from ._approvals import ApprovalPolicy as ApprovalPolicy
from ._approvals import Approver as Approver
from ._approvals import Chooser as Chooser
from ._approvals import Precheck as Precheck
from ._broadcast import Broadcast as Broadcast
from ._broadcast import BroadcastStatistics as BroadcastStatistics
from ._broadcast import SubscriberStatistics as SubscriberStatistics
from ._compaction import CompactionPlan as CompactionPlan
from ._compaction import CompactionPolicy as CompactionPolicy
from ._compaction import Compactor as Compactor
from ._compaction import ModelSummary as ModelSummary
from ._compaction import TruncationPolicy as TruncationPolicy
from ._context import Context as Context
from ._context import get_last_total_tokens as get_last_total_tokens
from ._context import get_last_usage as get_last_usage
from ._context import get_tool_call_delta as get_tool_call_delta
from ._context import get_tool_call_deltas as get_tool_call_deltas
from ._errors import AuthenticationError as AuthenticationError
from ._errors import BadRequestError as BadRequestError
from ._errors import ConfigurationError as ConfigurationError
from ._errors import ContextOverflowError as ContextOverflowError
from ._errors import InvalidChoiceError as InvalidChoiceError
from ._errors import MalformedStreamError as MalformedStreamError
from ._errors import NotFoundError as NotFoundError
from ._errors import OverloadedError as OverloadedError
from ._errors import PermissionDeniedError as PermissionDeniedError
from ._errors import ProviderConnectionError as ProviderConnectionError
from ._errors import ProviderError as ProviderError
from ._errors import ProviderTimeout as ProviderTimeout
from ._errors import RateLimitError as RateLimitError
from ._errors import RequestAnsweredError as RequestAnsweredError
from ._errors import RequestError as RequestError
from ._errors import ServerError as ServerError
from ._errors import SessionCorruptError as SessionCorruptError
from ._errors import SessionError as SessionError
from ._errors import SessionExistsError as SessionExistsError
from ._errors import SessionIdError as SessionIdError
from ._errors import SessionLockedError as SessionLockedError
from ._errors import SessionNotFoundError as SessionNotFoundError
from ._errors import SessionVersionError as SessionVersionError
from ._errors import SessionWriteError as SessionWriteError
from ._errors import SubagentDepthError as SubagentDepthError
from ._errors import ToolArgumentsError as ToolArgumentsError
from ._errors import ToolError as ToolError
from ._errors import TrurnError as TrurnError
from ._errors import UnknownRequestError as UnknownRequestError
from ._hooks import Block as Block
from ._hooks import Hooks as Hooks
from ._lineage import TurnLineage as TurnLineage
from ._lineage import current_turn as current_turn
from ._messages import AssistantMessage as AssistantMessage
from ._messages import Message as Message
from ._messages import SystemMessage as SystemMessage
from ._messages import ThinkingBlock as ThinkingBlock
from ._messages import ToolCall as ToolCall
from ._messages import ToolMessage as ToolMessage
from ._messages import Usage as Usage
from ._messages import UserMessage as UserMessage
from ._nucleus import Nucleus as Nucleus
from ._nucleus import Reducer as Reducer
from ._nucleus import Transition as Transition
from ._policies import IterationPolicy as IterationPolicy
from ._policies import LimitPolicy as LimitPolicy
from ._policies import LoopDetection as LoopDetection
from ._retry import RetryPolicy as RetryPolicy
from ._store import SessionInfo as SessionInfo
from ._store import SessionStore as SessionStore
from ._stream import PendingCall as PendingCall
from ._tools import BaseTool as BaseTool
from ._tools import FunctionTool as FunctionTool
from ._tools import ToolContext as ToolContext
from ._tools import tool as tool
from ._turn import OnEvent as OnEvent
from ._turn import OnProgress as OnProgress
from ._turn import TurnResult as TurnResult
from ._version import __version__ as __version__

__all__ = [
    "Agent",
    "ApprovalDecision",
    "ApprovalPolicy",
    "Approver",
    "AssistantMessage",
    "AuthenticationError",
    "BadRequestError",
    "BaseTool",
    "Block",
    "Broadcast",
    "BroadcastStatistics",
    "Chooser",
    "CompactionPlan",
    "CompactionPolicy",
    "Compactor",
    "ConfigurationError",
    "Context",
    "ContextOverflowError",
    "FunctionTool",
    "Hooks",
    "InvalidChoiceError",
    "IterationPolicy",
    "LimitPolicy",
    "LoopDetection",
    "MalformedStreamError",
    "Message",
    "ModelSummary",
    "NotFoundError",
    "Nucleus",
    "OnEvent",
    "OnProgress",
    "OverloadedError",
    "PendingCall",
    "PermissionDeniedError",
    "Precheck",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderTimeout",
    "RateLimitError",
    "Reducer",
    "RequestAnsweredError",
    "RequestError",
    "RetryPolicy",
    "ServerError",
    "SessionCorruptError",
    "SessionError",
    "SessionExistsError",
    "SessionIdError",
    "SessionInfo",
    "SessionLockedError",
    "SessionNotFoundError",
    "SessionStore",
    "SessionVersionError",
    "SessionWriteError",
    "SubagentDepthError",
    "SubscriberStatistics",
    "SystemMessage",
    "ThinkingBlock",
    "ToolArgumentsError",
    "ToolCall",
    "ToolContext",
    "ToolError",
    "ToolMessage",
    "Transition",
    "TruncationPolicy",
    "TrurnError",
    "TurnLineage",
    "TurnResult",
    "UnknownRequestError",
    "Usage",
    "UserMessage",
    "__version__",
    "current_turn",
    "events",
    "get_last_total_tokens",
    "get_last_usage",
    "get_tool_call_delta",
    "get_tool_call_deltas",
    "open_agent",
    "providers",
    "run_turn",
    "tool",
]
