"""A worker's link to its supervisor (workers.py): a socket pair. The supervisor
sends the pickled options first; the worker says WARM once its models are, and
opens the shared port when the supervisor answers GO."""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct

WARM, GO = b"W", b"G"
LENGTH = struct.Struct("!I")  # prefixes the pickled options, the link's first message


class Link:
    """A worker's end of its socket pair to the supervisor."""

    def __init__(self, fd: int, index: int):
        self.socket = socket.socket(fileno=fd)
        self.index = index
        # Only the supervisor holds the other end of the pair, so its pickle is trusted.
        self.options = pickle.loads(self._receive(LENGTH.unpack(self._receive(LENGTH.size))[0]))
        self.socket.setblocking(False)

    def _receive(self, size: int) -> bytes:
        """Blocking, before there is an event loop. Fewer bytes than asked mean the
        supervisor has gone (a signal that cuts MSG_WAITALL short ends this process:
        none is handled yet)."""
        data = self.socket.recv(size, socket.MSG_WAITALL)
        if len(data) < size:
            raise EOFError("the supervisor closed the link before sending the options")
        return data

    async def warm(self) -> bool:
        """Say this worker is warm; True once the supervisor says to listen, False
        if it has gone."""
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.socket, WARM)
        return await loop.sock_recv(self.socket, 1) == GO

    async def closed(self):
        """Returns when the supervisor has gone (its end of the pair closed)."""
        while await asyncio.get_running_loop().sock_recv(self.socket, 1):
            pass
