"""The span the agent hands to its exporters: an SDK ReadableSpan with constants where the
SDK works values out.

A module of its own because the SDK's class is Python: spans.py, which builds these, is
compiled by mypyc (native.py), and a compiled module's classes cannot derive from it.
"""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan


class AgentSpan(ReadableSpan):
    """A span built from an exchange. It never has events or links and drops nothing (the
    agent bounds attributes itself: attributes.py), so those are constants here: the SDK's
    properties work them out at each read (a tuple copied, an isinstance through an ABC),
    which the encoder paid for every span. Every other reader sees the same values."""

    dropped_attributes = 0
    dropped_events = 0
    dropped_links = 0
    events = ()
    links = ()
