"""Unit tests of systemd readiness notification (spanprobe.notify) over real sockets."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from spanprobe.notify import sd_notify


@pytest.fixture
def listener(tmp_path):
    path = tmp_path / "notify.sock"
    if len(str(path)) >= 100:                   # sun_path limit: fall back to a short dir
        path = f"/tmp/sp-notify-{uuid.uuid4().hex[:12]}.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(2)
    yield str(path), s
    s.close()
    if os.path.exists(str(path)):
        os.unlink(str(path))


def test_sends_one_datagram(listener):
    path, s = listener
    assert sd_notify("READY=1\nSTATUS=tracing with fentry", {"NOTIFY_SOCKET": path}) is True
    assert s.recv(4096) == b"READY=1\nSTATUS=tracing with fentry"


def test_abstract_socket_name():
    name = f"spanprobe-test-{os.getpid()}-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(2)
        assert sd_notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name}) is True
        assert s.recv(4096) == b"STOPPING=1"


def test_without_notify_socket_does_nothing():
    assert sd_notify("READY=1", {}) is False
    assert sd_notify("READY=1", {"NOTIFY_SOCKET": ""}) is False


def test_reads_the_process_environment_by_default(listener, monkeypatch):
    path, s = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert sd_notify("READY=1") is True
    assert s.recv(4096) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert sd_notify("READY=1") is False


def test_unreachable_socket_is_false_not_an_exception(tmp_path):
    assert sd_notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "absent.sock")}) is False
    assert sd_notify("READY=1", {"NOTIFY_SOCKET": "@" + uuid.uuid4().hex}) is False
