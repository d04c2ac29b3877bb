"""Model providers: the :class:`Provider` protocol and the adapters trurn ships."""

from ._base import Provider as Provider
from ._base import Request as Request
from ._base import ToolSpec as ToolSpec

__all__ = ["Provider", "Request", "ToolSpec"]
