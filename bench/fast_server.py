"""A cheap HTTP/1.1 server for the agent's throughput test: the same short response to
every request, keep-alive, one read and one write per request, on uvloop when installed.

    python -m bench.fast_server PORT

It exists so that the server is not the bottleneck when the agent is driven towards tens of
thousands of spans per second: the agent, not the app, is what that test measures.
"""

from __future__ import annotations

import asyncio
import sys

RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 27\r\n\r\n"
            b'{"id": 1, "name": "bench"}\n')


class Http(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.pending = b""

    def data_received(self, data):
        data = self.pending + data
        n = data.count(b"\r\n\r\n")
        if n:
            self.transport.write(RESPONSE * n)
            data = data[data.rfind(b"\r\n\r\n") + 4:]
        self.pending = data


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Http, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    port = int(sys.argv[1])
    try:
        from uvloop import run
    except ImportError:
        run = asyncio.run
    try:
        run(serve(port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
