"""The gateway's port, shared by several processes: used by `fleet/gateway_workers.py` (which keeps the port taken)
and `gateway/workers.py` (each worker listens on it), which do not import each other."""

from __future__ import annotations

import socket


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port in the SO_REUSEPORT group that the gateway's processes share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn binds
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock
