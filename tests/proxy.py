"""A TCP proxy on a free loopback port that a test cuts and restores: a network between a client and the server
that goes away (every connection through it dropped, new ones refused) and comes back on the same port."""

from __future__ import annotations

import asyncio
import contextlib

from tests.harness import free_port


class CuttableProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target_port` in the running event loop."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen (again, after a cut)."""
        self._server = await asyncio.start_server(self._link, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Stop listening and drop every connection at once (a reset, not a goodbye: no close frame passes)."""
        self.cuts += 1
        await self._drop()

    async def close(self) -> None:
        await self._drop()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _drop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()
        await asyncio.sleep(0)

    async def _link(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.transport.abort()
            return
        if self._server is None:  # cut while connecting
            client_writer.transport.abort()
            server_writer.transport.abort()
            return
        self._links |= {client_writer, server_writer}
        for reader, writer in ((client_reader, server_writer), (server_reader, client_writer)):
            pump = asyncio.create_task(self._pump(reader, writer))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._links.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()
