"""Head sampling with the OpenTelemetry SDK's own samplers, decided when a request's head
is read, so an unsampled request costs the agent its parsing only: no span is built,
queued or encoded for it.

The samplers are the SDK's (the ones OTEL_TRACES_SAMPLER names): `always_on`,
`always_off`, `traceidratio`, and the parent-based forms, `parentbased_always_on` being the
default. A ratio decision is the SDK's function of the trace id, so every process on the
host, and every service instrumented in-process with the same ratio, keeps or drops a
trace alike; a parent-based sampler follows the sampled bit of the request's parent (an
incoming traceparent, or the traced client on this host that made the call).
"""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.sdk.trace import sampling as sdk
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

# the value of OTEL_TRACES_SAMPLER / sampling.sampler -> the SDK's sampler for a ratio
SAMPLERS: dict[str, Callable[[float], sdk.Sampler]] = {
    "always_on": lambda ratio: sdk.ALWAYS_ON,
    "always_off": lambda ratio: sdk.ALWAYS_OFF,
    "traceidratio": sdk.TraceIdRatioBased,
    "parentbased_always_on": lambda ratio: sdk.DEFAULT_ON,
    "parentbased_always_off": lambda ratio: sdk.DEFAULT_OFF,
    "parentbased_traceidratio": sdk.ParentBasedTraceIdRatio,
}
RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")
SAMPLED = int(TraceFlags.SAMPLED)


class HeadSampler:
    """(trace id, parent span id or None, the parent's trace flags, parent is remote) ->
    the trace flags of the new span: the parent's other bits, the sampled bit decided."""

    def __init__(self, name: str, ratio: float = 1.0):
        self.name = name
        self.sampler = SAMPLERS[name](ratio)

    def __call__(self, trace_id: int, parent_span_id: int | None, flags: int, remote: bool) -> int:
        context = None
        if parent_span_id:
            parent = SpanContext(trace_id, parent_span_id, remote, TraceFlags(flags & 0xFF))
            context = trace.set_span_in_context(NonRecordingSpan(parent))
        sampled = self.sampler.should_sample(context, trace_id, "").decision.is_sampled()
        return (flags & ~SAMPLED) | (SAMPLED if sampled else 0)
