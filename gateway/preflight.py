"""What `kdgate serve` checks before the banner and before any model loads: the port it will listen on, and that
the record store's student versions can be served by this configuration. Each problem is one plain line and exit
code 2, instead of an ERROR holding a traceback after the models have loaded (a busy port used to be reported
only then, 12 s in; a store of another deployment made the gateway exit 3)."""

from __future__ import annotations

import errno
import logging
import socket

from gateway.settings import GatewaySettings
from gateway.students.loader import version_problem
from runtime.redact import redact


def start_problem(settings: GatewaySettings) -> str | None:
    """The first problem found (the port first: a busy one needs no store opened), or None."""
    return port_problem(settings.host, settings.port) or store_problem(settings)


def port_problem(host: str, port: int) -> str | None:
    """Bound and released at once, as uvicorn will bind it (SO_REUSEADDR: a port in TIME_WAIT is free)."""
    if port == 0:
        return None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        return (f"cannot listen on {host}: {error.strerror}; set `host` (--host, KDGATE_HOST) to an address of this "
                "machine")
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return (f"port {port} on {host} is already in use (another kdgate? `ss -ltnp 'sport = :{port}'` "
                        "names it); stop it, or pick another port with --port or KDGATE_PORT")
            return (f"cannot listen on {host}:{port} ({error.strerror}); check --host / --port (KDGATE_HOST, "
                    "KDGATE_PORT)")
    return None


def store_problem(settings: GatewaySettings) -> str | None:
    """The store's active (and canary) student version must be one this gateway can serve. A store that cannot be
    opened is not refused here: the gateway then serves the configured student and says so (gateway.students)."""
    url = settings.shadow.store_url
    if not settings.students.enabled or not url:
        return None
    from sqlalchemy.exc import SQLAlchemyError

    from runtime.store.records import ShadowStore
    from runtime.store.versions import StudentVersions

    quiet = logging.getLogger("alembic")  # the migrations are logged again when the gateway opens the store
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        store = ShadowStore(url)
    except (SQLAlchemyError, OSError):
        return None
    finally:
        quiet.setLevel(level)
    try:
        versions = StudentVersions(store)
        slot = versions.slot()
        for name in filter(None, (slot.active, slot.canary)):
            problem = version_problem(versions.get(name), settings.student)
            if problem:
                return (f"the record store {redact(url)} holds student version `{name}` as the "
                        f"{'active' if name == slot.active else 'canary'} one, which this gateway cannot serve: "
                        f"{problem}. Point `shadow.store_url` (KDGATE_SHADOW__STORE_URL) at this deployment's own "
                        "store, or promote or roll back to a version it can serve (`kdgate student`)")
    finally:
        store.close()
    return None
