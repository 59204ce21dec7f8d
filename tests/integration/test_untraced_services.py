"""What a service the agent does not trace pays for it: the TCP state program runs on every
state change of every socket on the host. Tracing by port alone, it keeps the local end of
connections accepted on a selected port only (the `accepted` table, which gives an accepted
connection its local address); every other socket's open and close is done with after one
lookup of the selected ports, instead of an insert and a delete in that table."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

from tests.support.procs import REPO, Agent, bpf_ids, free_port, wait_port

# listens on two ports and keeps every connection it accepts open until stdin closes
HOLDER = """
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in map(int, sys.argv[1:]):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(64); sel.register(s, selectors.EVENT_READ)
sel.register(sys.stdin, selectors.EVENT_READ)
held = []
while True:
    for key, _ in sel.select():
        if key.fileobj is sys.stdin:
            sys.exit(0)
        held.append(key.fileobj.accept()[0])
"""
CONNECTIONS = 8


def accepted_entries_by_local_port(agent_pid: int) -> dict[int, int]:
    """Entries of this agent's own `accepted` table, by the local port they hold."""
    for map_id in bpf_ids(agent_pid, "map"):
        info = json.loads(subprocess.run(["bpftool", "map", "show", "id", str(map_id), "-j"],
                                         capture_output=True, text=True, check=True).stdout)
        if info.get("name") != "accepted":
            continue
        dump = json.loads(subprocess.run(["bpftool", "map", "dump", "id", str(map_id), "-j"],
                                         capture_output=True, text=True, check=True).stdout)
        out: dict[int, int] = {}
        for entry in dump:
            value = bytes(int(b, 16) for b in entry["value"])   # struct sp_accepted: port at 16
            port = int.from_bytes(value[16:18], "little")
            out[port] = out.get(port, 0) + 1
        return out
    raise AssertionError(f"agent {agent_pid} holds no map named accepted")


def test_tracing_by_port_keeps_local_ends_of_the_selected_port_only(tmp_path, receiver):
    traced, untraced = free_port(), free_port()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(traced), str(untraced)], cwd=REPO,
                              stdin=subprocess.PIPE)
    clients: list[socket.socket] = []
    try:
        wait_port(traced, holder)
        wait_port(untraced, holder)
        agent = Agent(["--port", str(traced), "--otlp-endpoint", f"http://127.0.0.1:{receiver.grpc_port}"],
                      tmp_path)
        try:
            for port in (traced, untraced):
                for _ in range(CONNECTIONS):
                    clients.append(socket.create_connection(("127.0.0.1", port)))
            deadline = time.monotonic() + 10
            while True:
                got = accepted_entries_by_local_port(agent.proc.pid)
                if got.get(traced, 0) >= CONNECTIONS or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            # one entry per peer (each client its own port): all of the traced port's, none
            # of the other's, although the same process holds both
            assert got.get(traced, 0) == CONNECTIONS, got
            assert got.get(untraced, 0) == 0, got
        finally:
            assert agent.stop() == 0, agent.stderr[-2000:]
    finally:
        for c in clients:
            c.close()
        holder.stdin.close()
        holder.wait(10)
