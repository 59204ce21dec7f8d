"""The command line (spanprobe.cli) and `spanprobe check`'s report (spanprobe.check):
a usage or settings error is one line naming the fix and exit 2; errors map to exit codes."""

from __future__ import annotations

import re

import pytest

from spanprobe import check, cli
from spanprobe.errors import PermissionProblem


def run(capsys, *argv):
    try:
        rc = cli.main(list(argv))
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv, words", [
    (["run", "--port", "70000"], "--port 70000 is not a TCP port"),
    (["run", "--port", "http"], "--port 'http' is not a number"),
    (["run", "--otlp-protocol", "xml"], "--otlp-protocol"),
    (["run", "--attach-mode", "magic"], "--attach-mode"),
    (["run", "--bogus"], "unrecognized arguments: --bogus"),
    (["frobnicate"], "invalid choice"),
    ([], "command"),
])
def test_a_usage_error_is_one_line_and_exit_2(capsys, argv, words):
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], err
    assert lines[0].startswith("spanprobe: error: ")
    assert re.search(r"; see `spanprobe( run)? --help`$", lines[0])


def test_a_bad_config_file_is_one_line_and_exit_2(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("SPANPROBE_CONFIG", raising=False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("capture_bytes: lots\n")
    rc, out, err = run(capsys, "validate", "--config", str(bad))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "capture_bytes" in err


def test_validate_and_config_keys(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("SPANPROBE_CONFIG", raising=False)
    good = tmp_path / "good.yaml"
    good.write_text("capture_bytes: 512\n")
    rc, out, _ = run(capsys, "validate", "--config", str(good))
    assert rc == 0 and out.strip() == f"ok: {good} is valid"
    rc, out, _ = run(capsys, "config-keys")
    assert rc == 0 and "SPANPROBE_CAPTURE_BYTES" in out


def test_an_agent_error_is_its_message_and_exit_code(capsys, monkeypatch):
    from spanprobe import pipeline

    def refuse(self):
        raise PermissionProblem("missing CAP_BPF: run as root")
    monkeypatch.setattr(pipeline.Agent, "start", refuse)
    monkeypatch.setattr(pipeline, "install_signal_handlers", lambda agent: None)
    rc, out, err = run(capsys, "run", "--console", "--log-level", "error")
    assert rc == PermissionProblem.exit_code
    assert err.strip().splitlines()[-1] == "spanprobe: missing CAP_BPF: run as root"


REPORT = {"ok": True, "kernel": "6.18.0", "hot_modules": "compiled (mypyc)", "headers": "exact (6.18.0)",
          "headers_exact": True, "bcc": "0.26.0",
          "btf": True, "ring_buffer": True, "syscall_tracepoints": ["read"],
          "strategies": {"tracepoint": "available", "kprobe": "unavailable: no CONFIG_KPROBES",
                         "fentry": "available"},
          "chosen": {"strategy": "tracepoint", "transport": "ringbuf", "loaded": True, "compile_s": 9.5,
                     "hooks": ["tracepoint:read"], "skipped": [],
                     "passed_over": [["fentry", "compile/load failed: refused"]]}}


def test_check_prints_the_chosen_strategy(capsys, monkeypatch):
    monkeypatch.setattr(check, "gather", lambda settings, load: REPORT)
    assert check.run_check({}, load=True) == 0
    out = capsys.readouterr().out
    assert "chosen:      tracepoint + ringbuf, loaded in 9.5s" in out
    assert "hot modules: compiled (mypyc)" in out
    assert "passed over: fentry: compile/load failed: refused" in out
    assert out.strip().endswith("ok: spanprobe can run here")


def test_check_that_cannot_run_says_why_on_one_line_and_exits_3(capsys, monkeypatch):
    report = {"ok": False, "kernel": "6.18.0", "headers": "none", "bcc": None,
              "error": "bcc's Python module is missing"}
    monkeypatch.setattr(check, "gather", lambda settings, load: report)
    assert check.run_check({}, load=False, as_json=True) == 3
    out, err = capsys.readouterr()
    assert '"ok": false' in out
    assert err == "spanprobe: cannot run here: bcc's Python module is missing\n"
