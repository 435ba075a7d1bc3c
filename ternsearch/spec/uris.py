"""What a tracking URI, a storage path and a Ray address may look like: pure checks (no I/O, no network), shared by
the command line's overrides (``--tracking-uri``, ``--storage``, ``--address``) and the spec's own keys.

Each ``check_*`` returns None for a usable value, else what is wrong with it and, in parentheses at the end, what
is allowed: the caller puts the key or the argument in front (``--tracking-uri X: ...``, ``FILE:LINE: tracking.uri:
...``)."""

from __future__ import annotations

import re
from typing import Optional
from urllib.parse import urlsplit

__all__ = ["STORAGE_SCHEMES", "TRACKING_ALLOWED", "check_tracking_uri", "check_storage_path", "check_ray_address",
           "split_host_port"]

TRACKING_ALLOWED = ("http(s)://HOST[:PORT], sqlite:///FILE, a folder or file:FOLDER, postgresql://, mysql://, "
                    "mssql:// or databricks")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_HOST_PORT = re.compile(r"^[\w.-]+:\d+(/.*)?$")
_DATABASES = ("postgresql", "mysql", "mssql")
_OTHER_SCHEMES = ("databricks", "databricks-uc", "uc")
_ADDRESS_ALLOWED = "auto, or HOST:PORT of a Ray head such as 10.0.0.5:6379"


def _odd_characters(value: str) -> Optional[str]:
    if not value.strip():
        return "is empty"
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        return "contains a space or a control character"
    return None


def _check_server(uri: str, scheme: str) -> Optional[str]:
    """An ``http(s)://`` or database URI: a host, and a port (if any) from 1 to 65535."""
    allowed = f"{scheme}://HOST[:PORT] with a port from 1 to 65535, e.g. {scheme}://127.0.0.1:5000"
    try:
        parts = urlsplit(uri)
        host, port = parts.hostname, parts.port
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535", a port that is not a number
        return f"is not a valid {scheme} URL: {exc} ({allowed})"
    if not host:
        return f"has no host ({allowed})"
    if port == 0:
        return f"has port 0 ({allowed})"
    return None


def check_tracking_uri(uri: str) -> Optional[str]:
    """None when MLflow can use ``uri`` as a tracking store, else what is wrong (what is allowed).

    Allowed: ``http(s)://HOST[:PORT][/PATH]`` (a host, a port 1-65535, brackets round an IPv6 address),
    ``sqlite:///FILE`` (a file path after the three slashes), a folder or ``file:FOLDER`` (a file store),
    ``postgresql://``, ``mysql://`` and ``mssql://`` database URIs (``+DRIVER`` too), ``databricks``. A scheme
    MLflow knows only through a plugin is refused, and so is whitespace anywhere (a folder whose name has a space:
    ``file:`` with ``%20``)."""
    if not isinstance(uri, str):
        return f"is not text ({TRACKING_ALLOWED})"
    odd = _odd_characters(uri)
    if odd:
        return f"{odd} (a tracking URI is {TRACKING_ALLOWED})"
    scheme = _SCHEME.match(uri)
    if scheme is None:
        return None  # a folder: MLflow's file store
    name = scheme.group(1).lower()
    if name in ("http", "https"):
        return _check_server(uri, name) if uri.lower().startswith(f"{name}://") else (
            f"is not an {name} URL ({name}://HOST[:PORT], e.g. {name}://127.0.0.1:5000)")
    if name == "sqlite":
        if not uri.startswith("sqlite:///") or not uri[len("sqlite:///"):].split("?", 1)[0]:
            return "names no database file (sqlite:///FILE for a relative path, sqlite:////ABSOLUTE/FILE)"
        return None
    if name == "file":
        rest = uri[len("file:"):]
        if not rest.strip("/"):
            return "names no folder (file:FOLDER or file:///ABSOLUTE/FOLDER)"
        if rest.startswith("//") and not rest.startswith("///"):  # file://runs: 'runs' would be a host name
            return "is not a file URI of an absolute path (write file:///ABSOLUTE/FOLDER, file:FOLDER or FOLDER)"
        return None
    if name.split("+", 1)[0] in _DATABASES:
        return _check_server(uri, name) if "://" in uri else f"is not a database URL ({name}://USER@HOST/DB)"
    if name in _OTHER_SCHEMES:
        return None
    if _HOST_PORT.match(uri):
        return f"has no scheme (for a server write http://{uri})"
    return f"has an unknown scheme '{name}:' (a tracking URI is {TRACKING_ALLOWED})"


# What Ray Tune's storage (pyarrow.fs) opens besides a local path.
STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file")


def check_storage_path(path: str) -> Optional[str]:
    """None for a usable ``storage.path`` / ``--storage`` (a folder, or a URI of a file system Ray Tune opens:
    ``STORAGE_SCHEMES``; ``file://`` with an absolute path), else what is wrong (what is allowed). Whether the
    folder can be written is the preflight's check."""
    allowed = f"a folder, or a URI: {', '.join(s + '://' for s in STORAGE_SCHEMES)}"
    if not isinstance(path, str):
        return f"is not text ({allowed})"
    odd = _odd_characters(path)
    if odd:
        return f"{odd} ({allowed})"
    scheme, sep, rest = path.partition("://")
    if not sep:
        return None
    if scheme not in STORAGE_SCHEMES:
        return f"has the scheme '{scheme}://', which Ray Tune cannot open ({allowed})"
    if scheme == "file" and not rest.startswith("/"):
        return "is not a file URI of an absolute path (write file:///ABSOLUTE/PATH, or a plain path)"
    if not rest.strip("/"):
        return f"names no bucket or folder ({allowed})"
    return None


def split_host_port(address: str) -> Optional[tuple[str, int]]:
    """``(host, port)`` of ``HOST:PORT`` or ``[IPV6]:PORT``, with a port from 1 to 65535; None when ``address`` is
    not of that form."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.%\w]+)\]:(\d{1,5})|([^\s:/\[\]]+):(\d{1,5})", address)
    if m is None:
        return None
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    return (host, int(port)) if 1 <= int(port) <= 65535 else None


def check_ray_address(address: str) -> Optional[str]:
    """None for ``auto`` or ``HOST:PORT`` (port 1-65535), else what is wrong (what is allowed). Whether a cluster
    listens there is ``ternsearch.run.cluster.check_cluster``'s question. A Ray Client address (``ray://``) is
    refused: the sweep's driver, which writes its records, must run here."""
    if address == "auto" or split_host_port(address) is not None:
        return None
    if address.startswith("ray://"):
        return ("is a Ray Client address, which a sweep cannot use: its driver runs here and joins the cluster "
                "itself (give the head's HOST:PORT, port 6379 unless ray start --port said otherwise)")
    if not address.strip():
        return f"is empty ({_ADDRESS_ALLOWED})"
    port = address.rpartition(":")[2]
    if ":" in address and port.isdigit() and not 1 <= int(port) <= 65535:
        return f"has port {port}, outside 1 to 65535 ({_ADDRESS_ALLOWED})"
    return f"is not a Ray cluster address ({_ADDRESS_ALLOWED})"
