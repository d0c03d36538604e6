"""The worker's readiness: what /readyz answers and the ``streamproc_ready`` gauge shows."""

from __future__ import annotations

from streamproc.adapters.deployment import Status
from streamproc.metrics import Metrics


class Readiness:
    """Health flags fed by the Redis retrier, the deployment guard and the publisher.

    Ready = started, Redis answering and still the Redis this deployment wrote to, and
    every output acknowledged by the broker. Each change updates the ready gauge at once,
    so /metrics and /readyz never disagree.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.started = False
        self.redis_ok = True
        #: No output record waiting to be sent again.
        self.publish_ok = True
        #: The deployment marker check (adapters.deployment): "lost" holds every Redis call.
        self.redis_state: Status = "unverified"
        self.redis_state_reason: str | None = None

    @property
    def ready(self) -> bool:
        """Whether the worker may be sent traffic (see the class docstring)."""
        return (self.started and self.redis_ok and self.redis_state == "ok"
                and self.publish_ok)

    def on_redis(self, ok: bool) -> None:
        """The Redis retrier saw Redis answer (or stop answering)."""
        self.redis_ok = ok
        self._publish()

    def on_guard(self, status: Status, reason: str | None) -> None:
        """The deployment guard's verdict on the Redis in use changed."""
        self.redis_state, self.redis_state_reason = status, reason
        self.metrics.redis_state_lost.set(1 if status == "lost" else 0)
        self._publish()

    def on_publish(self, ok: bool) -> None:
        """Outputs are acknowledged again (or one waits to be sent again)."""
        self.publish_ok = ok
        self._publish()

    def mark_started(self) -> None:
        """The first deployment check passed: the worker may become ready."""
        self.started = True
        self._publish()

    def body(self) -> dict[str, object]:
        """The /readyz JSON body."""
        body: dict[str, object] = {"ready": self.ready, "started": self.started,
                                   "redis": self.redis_ok, "redis_state": self.redis_state,
                                   "publish": self.publish_ok}
        if self.redis_state_reason is not None:
            body["reason"] = self.redis_state_reason
        return body

    def _publish(self) -> None:
        self.metrics.ready.set(1 if self.ready else 0)
