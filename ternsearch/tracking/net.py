"""Sockets, briefly: can this machine listen on HOST:PORT (``ternsearch ui`` before it starts the MLflow server),
and does anything accept a connection at HOST:PORT (``sweep --address`` before ``ray.init``, which waits for
minutes on a cluster that is not there). Every wait is bounded, name resolution included."""

from __future__ import annotations

import socket
import threading
from typing import Optional

__all__ = ["resolve", "connect_problem", "listen_problem"]


def resolve(host: str, port: int, timeout: float, passive: bool = False) -> list[tuple]:
    """``socket.getaddrinfo`` for TCP within ``timeout`` seconds (the resolver's own waits can be long).

    Raises:
        OSError: ``socket.gaierror`` for an unknown host, ``TimeoutError`` when the resolver took too long.
    """
    found: dict = {}

    def run() -> None:
        try:
            found["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                flags=socket.AI_PASSIVE if passive else 0)
        except OSError as exc:
            found["error"] = exc
        except (UnicodeError, ValueError) as exc:  # a name IDNA cannot encode (lone surrogates, labels over 63)
            found["error"] = socket.gaierror(f"{host!r} is not a host name ({exc})")

    thread = threading.Thread(target=run, name="ternsearch-resolve", daemon=True)
    thread.start()
    thread.join(timeout)
    if "error" in found:
        raise found["error"]
    if "infos" not in found:
        raise TimeoutError(f"resolving {host} took over {timeout:g} s")
    return found["infos"]


def connect_problem(host: str, port: int, timeout: float = 5.0) -> Optional[str]:
    """None when something at ``host:port`` accepts a TCP connection within ``timeout`` seconds, else why not, in
    a few words: ``unknown host``, ``nothing listens there``, ``no answer within 5 s``..."""
    try:
        infos = resolve(host, port, timeout)
    except socket.gaierror:
        return f"unknown host {host}"
    except OSError as exc:
        return str(exc)
    reasons = []
    for family, kind, proto, _, where in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout)
                sock.connect(where)
                return None
        except ConnectionRefusedError:
            reasons.append("nothing listens there")
        except (socket.timeout, TimeoutError):
            reasons.append(f"no answer within {timeout:g} s")
        except OSError as exc:
            reasons.append(exc.strerror or type(exc).__name__)
    return reasons[0] if reasons else f"{host} has no address"


def listen_problem(host: str, port: int, timeout: float = 5.0) -> tuple[int, Optional[OSError]]:
    """``(port, None)`` when this process could listen on ``host:port`` now (port 0: a free port, the one
    returned), else ``(port, the error)``: ``socket.gaierror`` for an unknown host, ``EADDRINUSE``,
    ``EADDRNOTAVAIL`` (not an address of this machine), ``EACCES``... The socket is closed at once: another program
    may take the port before the caller's server binds it (a race the caller accepts; the server then fails with
    its own message)."""
    try:
        family, kind, proto, _, where = resolve(host, port, timeout, passive=True)[0]
    except OSError as exc:
        return port, exc
    try:
        with socket.socket(family, kind, proto) as sock:
            # as uvicorn does: a port whose last connections are in TIME_WAIT is free; a listening one is not
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(where)
            return sock.getsockname()[1], None
    except OSError as exc:
        return port, exc
