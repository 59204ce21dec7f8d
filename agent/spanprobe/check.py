"""`spanprobe check`: can the agent run on this machine, and how.

Exit 0 when it can (after really compiling, loading and attaching the probes, unless
--no-load), else the reason and the fix on one line and a non-zero exit. A strategy is
"available" when the kernel declares what it needs; one that was then refused when loaded
(fentry on a kernel that declares it but says EPERM) is listed as refused, with the reason.
"""

from __future__ import annotations

import json
import os
import sys

from . import native
from .caps import check as missing_capabilities
from .errors import SpanprobeError
from .headers import read_status
from .kernel import detect, ensure_tracefs
from .loader import import_bcc, load_best
from .probes import SYSCALLS, TRACEPOINTS, candidates, make_plan, strategy_available
from .procfs import SysRoot


def gather(settings, load: bool = True, root: SysRoot | None = None) -> dict:
    root = root or SysRoot("/")
    report: dict = {"ok": False}
    release = os.uname().release
    report["kernel"] = release
    report["hot_modules"] = native.state()
    headers = read_status(release)
    report["headers"] = headers.describe(release)
    report["headers_exact"] = headers.exact
    try:
        bcc = import_bcc()
        from bcc.version import __version__ as bcc_version
        report["bcc"] = bcc_version
        del bcc
    except SpanprobeError as exc:
        report["bcc"] = None
        report["error"] = str(exc)
        return report
    if (problem := missing_capabilities()) is not None:
        report["error"] = problem
        return report
    try:
        report["tracefs"] = ensure_tracefs(root)
    except SpanprobeError as exc:
        report["error"] = str(exc)
        return report
    feats = detect(root, SYSCALLS, TRACEPOINTS)
    report["btf"] = feats.btf
    report["ring_buffer"] = feats.ringbuf
    report["syscall_tracepoints"] = sorted(feats.syscall_tracepoints)
    report["tracepoints"] = sorted(feats.tracepoints)
    strategies = {}
    for s in ("tracepoint", "kprobe", "fentry"):
        ok, why = strategy_available(feats, s)
        strategies[s] = "available" if ok else f"unavailable: {why}"
    report["strategies"] = strategies
    usable, refused = candidates(feats, settings["attach_mode"])
    if headers.build_dir is None:
        report["error"] = ("no kernel headers at /lib/modules/%s/build: run "
                           "`python3 -m spanprobe.headers ensure` or scripts/dev.sh setup" % release)
        return report
    if not usable:
        report["error"] = "no usable attach strategy: " + "; ".join(f"{s}: {w}" for s, w in refused)
        return report
    if not load:
        plan = make_plan(feats, usable[0], settings, settings["buffer"])
        report["chosen"] = {"strategy": plan.strategy, "transport": plan.transport,
                            "loaded": False, "skipped": plan.skipped}
        report["ok"] = True
        return report
    try:
        session, passed = load_best(feats, settings, os.getpid(), True)
    except SpanprobeError as exc:
        report["error"] = str(exc)
        return report
    for name, why in passed:
        if strategies.get(name) == "available":     # declared by the kernel, refused when loaded
            strategies[name] = f"refused when loaded: {why}"
    report["chosen"] = {"strategy": session.plan.strategy, "transport": session.plan.transport,
                        "loaded": True, "compile_s": round(session.compile_s, 2),
                        "hooks": session.attached, "skipped": session.plan.skipped,
                        "passed_over": passed}
    session.close()
    report["ok"] = True
    return report


def run_check(settings, load: bool = True, as_json: bool = False) -> int:
    report = gather(settings, load)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(f"kernel:      {report['kernel']}")
        print(f"headers:     {report['headers']}")
        if not report.get("headers_exact", False) and "nearest" in report["headers"]:
            print("warning:     kernel headers do not match the running kernel (nearest Debian ones)")
        print(f"bcc:         {report.get('bcc') or 'missing'}")
        print(f"hot modules: {report['hot_modules']}")
        if "btf" in report:
            print(f"btf:         {'yes' if report['btf'] else 'no'}")
            print(f"ring buffer: {'yes' if report['ring_buffer'] else 'no (perf buffer)'}")
            print(f"syscall tracepoints: {len(report['syscall_tracepoints'])} of {len(SYSCALLS)}")
            for s, state in report["strategies"].items():
                print(f"  {s:<11} {state}")
        chosen = report.get("chosen")
        if chosen:
            print(f"chosen:      {chosen['strategy']} + {chosen['transport']}"
                  + (f", loaded in {chosen['compile_s']}s" if chosen.get("loaded") else " (not loaded)"))
            if chosen.get("hooks"):
                print(f"hooks:       {', '.join(chosen['hooks'])}")
            for name, why in chosen.get("skipped", []):
                print(f"skipped:     {name}: {why}")
            for name, why in chosen.get("passed_over", []):
                print(f"passed over: {name}: {why}")
    if not report["ok"]:
        sys.stderr.write(f"spanprobe: cannot run here: {report.get('error')}\n")
        return 3
    if not as_json:
        print("ok: spanprobe can run here")
    return 0
