"""Model providers: the :class:`Provider` protocol and the adapters trurn ships."""

from ._base import Provider as Provider
from ._base import Request as Request
from ._base import ToolSpec as ToolSpec
from ._openai import OpenAIChat as OpenAIChat

__all__ = ["OpenAIChat", "Provider", "Request", "ToolSpec"]
