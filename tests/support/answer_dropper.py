"""A TCP proxy in front of a plaintext gRPC server that can lose one answer.

It forwards both directions and reads the server's HTTP/2 frames as they pass. Once armed,
the next time the server starts answering a call (a HEADERS frame on a stream, which grpc
sends with the response once the handler has finished) it closes that connection instead of
forwarding the frame: the work was done, the client sees UNAVAILABLE. Everything else passes.
"""

from __future__ import annotations

import contextlib
import socket
import threading

_FRAME_HEADER_BYTES = 9
_HEADERS = 0x1


class AnswerDropper:
    """Listens on 127.0.0.1:`port` and forwards to `target` ("host:port")."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.armed = threading.Event()
        """Set: lose the next answer (cleared when it is lost)."""
        self.dropped = threading.Event()
        """Set once an answer was lost."""
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        """host:port clients connect to."""
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        """Stop accepting connections."""
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            threading.Thread(target=self._pipe, args=(client, server), daemon=True).start()
            threading.Thread(target=self._answers, args=(server, client), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _cut(source, sink)

    def _answers(self, server: socket.socket, client: socket.socket) -> None:
        """Server → client, frame by frame; when armed, cut the connection at an answer."""
        pending = b""
        try:
            while data := server.recv(65536):
                pending += data
                while len(pending) >= _FRAME_HEADER_BYTES:
                    length = int.from_bytes(pending[:3], "big")
                    frame_type = pending[3]
                    stream = int.from_bytes(pending[5:9], "big") & 0x7FFFFFFF
                    if frame_type == _HEADERS and stream != 0 and self.armed.is_set():
                        self.armed.clear()
                        self.dropped.set()
                        return
                    if len(pending) < _FRAME_HEADER_BYTES + length:
                        break
                    client.sendall(pending[: _FRAME_HEADER_BYTES + length])
                    pending = pending[_FRAME_HEADER_BYTES + length :]
        except OSError:
            pass
        finally:
            _cut(server, client)


def _cut(*ends: socket.socket) -> None:
    """Close both ends at once (shutdown first: it wakes the thread reading the other way)."""
    for end in ends:
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)
        end.close()
