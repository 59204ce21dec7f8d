"""Command line: spanprobe run | check | demo | config-keys."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .config import ATTACH_MODES, BUFFER_KINDS, OTLP_PROTOCOLS, describe_keys, resolve
from .errors import SpanprobeError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the fix, exit 2."""

    def error(self, message: str):
        sys.stderr.write(f"spanprobe: error: {message}; see `{self.prog} --help`\n")
        sys.exit(2)


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--port {text!r} is not a number") from None
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"--port {v} is not a TCP port (1-65535)")
    return v


def _settings_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML settings file")
    p.add_argument("--port", type=_port, action="append", default=[], help="trace processes listening on PORT")
    p.add_argument("--pid", type=int, action="append", default=[], help="trace process PID and its children")
    p.add_argument("--exe", action="append", default=[], help="trace processes by executable/script name or path")
    p.add_argument("--otlp-endpoint", help="OTLP receiver, e.g. http://127.0.0.1:4317")
    p.add_argument("--otlp-protocol", choices=OTLP_PROTOCOLS)
    p.add_argument("--console", action="store_true", default=None, help="print one line per span")
    p.add_argument("--attach-mode", choices=ATTACH_MODES)
    p.add_argument("--buffer", choices=BUFFER_KINDS)
    p.add_argument("--capture-bytes", type=int)
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--max-cpu-percent", metavar="PERCENT",
                   help="CPU budget of the agent and its programs, in percent of one CPU")


def _flags(args) -> dict:
    return {
        "select.ports": args.port, "select.pids": args.pid, "select.exe": args.exe,
        "export.otlp_endpoint": args.otlp_endpoint, "export.otlp_protocol": args.otlp_protocol,
        "export.console": args.console, "attach_mode": args.attach_mode, "buffer": args.buffer,
        "capture_bytes": args.capture_bytes, "log_level": args.log_level,
        "budget.max_cpu_percent": args.max_cpu_percent,
    }


def _logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s spanprobe %(levelname)s %(message)s")


def cmd_run(args) -> int:
    from .memory import settle_heap
    from .pipeline import Agent, install_signal_handlers

    settings = resolve(_flags(args), file=args.config)
    _logging(settings["log_level"])
    agent = Agent(settings, stop_after=args.duration)
    install_signal_handlers(agent)
    agent.start()
    settle_heap()
    return agent.run()


def cmd_check(args) -> int:
    from .check import run_check

    settings = resolve(_flags(args), file=args.config)
    _logging(settings["log_level"] if args.log_level else "warning")
    return run_check(settings, load=not args.no_load, as_json=args.json)


def cmd_validate(args) -> int:
    resolve(_flags(args), file=args.config)        # a bad setting raises ConfigError (exit 2)
    print(f"ok: {args.config or 'the settings'} is valid")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    _logging("info")
    return run_demo(duration=args.duration, attach_mode=args.attach_mode)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="spanprobe", description="HTTP spans from unmodified processes, via eBPF")
    parser.add_argument("--version", action="version", version=f"spanprobe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="trace and export spans until SIGTERM/SIGINT")
    _settings_args(run)
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="can the agent run here? which hooks, which strategy")
    _settings_args(check)
    check.add_argument("--no-load", action="store_true", help="do not compile and load the probes")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_check)
    validate = sub.add_parser("validate", help="check the settings (a config file) and exit")
    _settings_args(validate)
    validate.set_defaults(func=cmd_validate)
    demo = sub.add_parser("demo", help="trace two demo services with traffic, spans on the console")
    demo.add_argument("--duration", type=float, default=15.0, help="seconds, 0 = until Ctrl-C")
    demo.add_argument("--attach-mode", choices=ATTACH_MODES, default="auto")
    demo.set_defaults(func=cmd_demo)
    keys = sub.add_parser("config-keys", help="list every setting, its variable and default")
    keys.set_defaults(func=lambda a: print(describe_keys()) or 0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpanprobeError as exc:
        sys.stderr.write(f"spanprobe: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
