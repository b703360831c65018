"""A loopback proxy whose gRPC calls are never cancelled by their callers."""

import socket
import threading

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # what an HTTP/2 client sends before its first frame
RST_STREAM = 0x3  # the frame type by which a client cancels a call


class Uncancelled:
    """Passes a gRPC client's HTTP/2 frames on to `upstream` ("host:port"), all but its
    RST_STREAMs, and the server's bytes back as they come. A caller cancels its call when
    its deadline passes, and the cancel races the server's own deadline (the one the call
    carried, which the server counts from when it read the call): a server that read the
    call late sees the cancel come early, and counts it CANCELLED. So it does when the
    caller then closes its channel: the server cancels the calls of a connection that ends
    (all 16 requests of an ExplainMany, once in 60 such calls on a loaded core). The
    connection to the server stays open until close(). Through here the server alone ends
    the call, at its own deadline. Call through `target`; a context manager."""

    def __init__(self, upstream: str):
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.target = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.kept_back = 0  # cancels not passed on
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                caller, _ = self._listener.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(self._upstream)
            self._sockets += [caller, server]
            threading.Thread(target=self._frames, args=(caller, server), daemon=True).start()
            threading.Thread(target=self._bytes, args=(server, caller), daemon=True).start()

    def _frames(self, source: socket.socket, sink: socket.socket):
        """Until the caller hangs up, which the server is not told (close() tells it)."""
        try:
            sink.sendall(_exactly(source, len(PREFACE)))
            while True:
                head = _exactly(source, 9)  # length (3 bytes), type, flags, stream id (4)
                body = _exactly(source, int.from_bytes(head[:3], "big"))
                if head[3] == RST_STREAM:
                    self.kept_back += 1
                else:
                    sink.sendall(head + body)
        except OSError:
            pass

    @staticmethod
    def _bytes(source: socket.socket, sink: socket.socket):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _stop_sending(sink)

    def close(self):
        for s in [self._listener, *self._sockets]:
            _stop_sending(s, socket.SHUT_RDWR)  # wakes the threads blocked on it
            s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _exactly(source: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = source.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _stop_sending(s: socket.socket, how: int = socket.SHUT_WR):
    try:
        s.shutdown(how)
    except OSError:
        pass
