"""spanprobe: HTTP spans from unmodified processes, seen from the kernel with eBPF.

The pipeline, one module per stage:
    discover (discovery.py) -> attach (probes.py, loader.py) -> decode (events.py)
    -> assemble spans (streams.py, httpparse.py, spans.py) -> export (export.py)
wired together by pipeline.py and driven from cli.py.
"""

__version__ = "0.1.0"

from . import native as _native

_native.use_compiled(__path__)   # the hot modules compiled by mypyc, when built from these sources
