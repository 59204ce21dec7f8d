"""A traced process's own OpenTelemetry resource settings (OTEL_SERVICE_NAME and
OTEL_RESOURCE_ATTRIBUTES in its exec-time environment), read with the SDK's own parser.

Why the SDK's parser: a service instrumented in-process and the same service seen by the
agent must get the same resource from the same variables (split on ",", then on the first
"=", key and value stripped, the value percent-decoded, a pair without "=" skipped with a
warning; OTEL_SERVICE_NAME beats service.name). Its only entry point,
OTELResourceDetector.detect(), reads the module global `environ` of
opentelemetry.sdk.resources; it is pointed at the target's variables for the one call,
under a lock, and never at os.environ (which the agent's exporters read).

Every byte comes from whoever started the target: the value is bounded before parsing and
the number and length of attributes kept are bounded; what is skipped, dropped or cut is
counted (SpanBuilder.resource adds it to the stats, and redacts secret-looking values).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from opentelemetry.sdk import resources as sdk_resources
from opentelemetry.sdk.environment_variables import OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME


# bounds on what one target may put into every span's resource
MAX_VALUE_BYTES = 4096          # a longer OTEL_RESOURCE_ATTRIBUTES is ignored whole
MAX_ATTRIBUTES = 32             # pairs kept, in the order given
MAX_ATTRIBUTE_CHARS = 256       # a longer key or value is cut to this
VARIABLES = (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES)

_LOCK = threading.Lock()


@dataclass(frozen=True)
class TargetResource:
    """What a target's own variables say: its attributes (service.name included, as the SDK
    decides it) and how many of its pairs were skipped, cut or dropped."""

    attributes: dict[str, str]
    skipped: int = 0        # malformed pairs (no "="), as the SDK skips them
    dropped: int = 0        # beyond MAX_ATTRIBUTES, or the whole value beyond MAX_VALUE_BYTES
    cut: int = 0            # keys or values longer than MAX_ATTRIBUTE_CHARS

    @property
    def service_name(self) -> str | None:
        return self.attributes.get("service.name") or None


class _CountWarnings(logging.Filter):
    """The SDK warns once per malformed pair; per target process that would flood the
    journal, so the warnings become a count instead."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.count += 1
        return False


def _detect(env: dict[str, str]) -> tuple[dict[str, str], int]:
    counter = _CountWarnings()
    sdk_log = logging.getLogger(sdk_resources.__name__)
    with _LOCK:
        saved = sdk_resources.environ
        sdk_resources.environ = env
        sdk_log.addFilter(counter)
        try:
            found = sdk_resources.OTELResourceDetector().detect()
        finally:
            sdk_log.removeFilter(counter)
            sdk_resources.environ = saved
    return {str(k): str(v) for k, v in found.attributes.items()}, counter.count


def read(env: dict[str, str]) -> TargetResource:
    """The resource a target's own variables give (`env`: at least VARIABLES of it)."""
    own = {k: env[k] for k in VARIABLES if env.get(k)}
    if not own:
        return TargetResource({})
    dropped = 0
    if len(own.get(OTEL_RESOURCE_ATTRIBUTES, "").encode(errors="replace")) > MAX_VALUE_BYTES:
        del own[OTEL_RESOURCE_ATTRIBUTES]
        dropped += 1
    found, skipped = _detect(own)
    kept: dict[str, str] = {}
    cut = 0
    for key, value in found.items():
        if not key:
            skipped += 1
            continue
        if len(kept) >= MAX_ATTRIBUTES and key != "service.name":
            dropped += 1
            continue
        if len(key) > MAX_ATTRIBUTE_CHARS or len(value) > MAX_ATTRIBUTE_CHARS:
            key, value, cut = key[:MAX_ATTRIBUTE_CHARS], value[:MAX_ATTRIBUTE_CHARS], cut + 1
        kept[key] = value
    return TargetResource(kept, skipped, dropped, cut)
