"""A trivial HTTP target for the dispatch benchmark, in a process of its own.

    python benchmarks/target.py PORT

Answers every request 200 with an empty body, at once or, for ``/sleep/MS``, after MS
milliseconds. ``GET /stats`` answers ``{"count", "open", "peak"}``: requests answered, requests
being held now, and the most held at once; ``GET /reset`` zeroes them. asyncio, so that holding
hundreds of requests costs nothing and the target stays far faster than what it measures.
"""

from __future__ import annotations

import asyncio
import json
import sys

stats = {"count": 0, "open": 0, "peak": 0}


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            path = head.split(b" ", 2)[1]
            body = b""
            if path == b"/stats":
                body = json.dumps(stats).encode()
            elif path == b"/reset":
                stats.update(count=0, open=0, peak=0)
            else:
                if path.startswith(b"/sleep/"):
                    stats["open"] += 1
                    stats["peak"] = max(stats["peak"], stats["open"])
                    await asyncio.sleep(int(path[7:]) / 1000)
                    stats["open"] -= 1
                stats["count"] += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
