"""Model providers: the :class:`Provider` protocol and the adapters trurn ships."""

from ._anthropic import AnthropicMessages as AnthropicMessages
from ._base import Provider as Provider
from ._base import Request as Request
from ._base import ToolSpec as ToolSpec
from ._openai import OpenAIChat as OpenAIChat
from ._select import provider_from_string as provider_from_string

__all__ = [
    "AnthropicMessages",
    "OpenAIChat",
    "Provider",
    "Request",
    "ToolSpec",
    "provider_from_string",
]
