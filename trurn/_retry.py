"""When to call the model again after it failed before any output.

:class:`RetryPolicy` is plain data; :func:`retry_delay` is the pure decision. The turn
applies them only while nothing of the reply has been consumed yet, so a retry never
duplicates output.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import msgspec

from ._errors import ProviderError

__all__ = ["RetryPolicy", "retry_delay"]


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Exponential backoff with jitter for retryable provider errors.

    ``attempts`` counts every call, the first included (1 = never retry). The wait
    before attempt ``n + 1`` is ``initial_delay * multiplier ** (n - 1)``, at most
    ``max_delay``, spread by ``jitter`` (0.1 = ±10%). A server's ``Retry-After``
    (``retry-after-ms``) replaces the computed wait, unless it is longer than
    ``max_retry_after``: then waiting is pointless for an interactive turn and the
    error is raised. Only errors whose ``retryable`` is true are retried: rate limits,
    overload, server errors, timeouts and connection failures.
    """

    attempts: int = 3
    initial_delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.1
    max_retry_after: float = 120.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be at least 1, got {self.attempts}")
        for name in ("initial_delay", "max_delay", "max_retry_after"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"RetryPolicy.{name} must be >= 0, got {value}")
        if not self.multiplier >= 1:
            raise ValueError(f"RetryPolicy.multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"RetryPolicy.jitter must be from 0 to 1, got {self.jitter}")


NO_RETRY = RetryPolicy(attempts=1)


def retry_delay(
    policy: RetryPolicy,
    attempt: int,
    error: ProviderError,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float | None:
    """Seconds to wait before trying again after ``attempt`` (from 1) failed with
    ``error``, or ``None`` to give up and raise it."""
    if attempt >= policy.attempts or not error.retryable:
        return None
    if error.retry_after is not None:
        return error.retry_after if error.retry_after <= policy.max_retry_after else None
    # Grown one step at a time, and only until it reaches max_delay: a power of a huge
    # multiplier overflows a float long before ``attempts`` runs out.
    delay = policy.initial_delay
    if policy.multiplier > 1:
        for _ in range(attempt - 1):
            if not 0 < delay < policy.max_delay:
                break
            delay *= policy.multiplier
    delay = min(policy.max_delay, delay)
    if policy.jitter:
        delay *= uniform(1 - policy.jitter, 1 + policy.jitter)
    return delay
