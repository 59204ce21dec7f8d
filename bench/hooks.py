"""Empty BPF programs on the agent's own hooks: the floor under what tracing costs an app.

    python -m bench.hooks --port N      (as root, with bcc: the dev venv's python)

Attaches a program that returns at once to every tracepoint the agent's tracepoint plan
attaches to for `--port N` (each syscall's enter and exit, close's enter, the scheduler
and socket tracepoints), prints `ready hooks=<count> strategy=tracepoint` and holds them
until SIGTERM (the bench compares it with the strategy the agent reports in its row). The
benchmark runs it as its `hooks` configuration: what the app pays there is the price of
being hooked at all (the kernel's syscall tracing path and one BPF program run per hook,
for every process on the host), which no work inside the agent's programs can lower.
spanprobe's cost above `hooks` is what its programs do; `hooks` above bare is the floor of
this attach strategy on this kernel.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))

from spanprobe import config, kernel, loader, probes  # noqa: E402
from spanprobe.procfs import SysRoot  # noqa: E402

PROGRAM = b"int sp_empty(void *ctx) { return 0; }"


def hook_points(port: int) -> list[str]:
    """The tracepoints ("category:event") the agent's tracepoint plan attaches to when it
    selects `port`, each with whether the agent requires it."""
    settings = config.resolve({"select.ports": [port]}, {})
    kernel.ensure_tracefs(SysRoot("/"))
    feats = kernel.detect(SysRoot("/"), probes.SYSCALLS, probes.TRACEPOINTS)
    plan = probes.make_plan(feats, "tracepoint", settings, settings["buffer"])
    points = []
    for p in plan.syscalls:
        points.append((f"syscalls:sys_enter_{p.name}", p.required))
        if not p.entry_only:
            points.append((f"syscalls:sys_exit_{p.name}", p.required))
    return points + [(p.name, p.required) for p in plan.tracepoints]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hooks", description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True, help="the port the agent would select")
    args = ap.parse_args(argv)
    bcc = loader.import_bcc()
    b = bcc.BPF(text=PROGRAM)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        attached = 0
        for tp, required in hook_points(args.port):
            try:
                b.attach_tracepoint(tp=tp.encode(), fn_name=b"sp_empty")
                attached += 1
            except Exception as exc:   # noqa: BLE001 - bcc raises plain Exception
                if required:
                    raise
                print(f"optional hook {tp} not attached, as the agent would skip it: {exc}", flush=True)
        print(f"ready hooks={attached} strategy=tracepoint", flush=True)
        stop.wait()
    finally:
        loader.release_bpf(b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
