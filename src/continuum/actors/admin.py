"""The admin API: the config (read, replace, patch, reload, history, rollback, export) and
the backends (list, add, change, drain, remove) of a running router, over HTTP.

Every endpoint is in ``docs/admin-api.md``. What holds for all of them:

* credentials first (``admin.auth``; constant time, :mod:`continuum.core.credentials`):
  without valid ones every path under ``/admin/`` answers 401, unknown ones included, so
  nothing is learned about the API without them; with ``method: none`` only loopback and
  Unix-socket clients are let in (403 for the others);
* a change is validated exactly as a config file is (the same messages, with key paths:
  422 ``invalid_config``), ``?dry_run=true`` answers what it would change without making
  it, and the change goes through the :class:`~continuum.actors.reload.Reconfigurer`, so it
  is a new version with an audit line (who, what, versions before and after);
* no answer shows a secret: configs are masked (``***``), and a ``***`` sent back keeps the
  current value.

``/admin/health`` is not part of it: it stays an open, fixed route of the Ingress.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import logging
import math
import os
from collections.abc import Callable
from functools import partial
from typing import Any, Final, final
from urllib.parse import parse_qs, unquote

import msgspec
import trio
import yaml

from ..config import (
    Config,
    ConfigError,
    canonical_patch,
    config_from_dict,
    dump_toml,
    editable_document,
    masked_builtins,
    merge_patch,
    parse_document,
    restore_secrets,
)
from ..config._changes import MAX_DOCUMENT
from ..core.credentials import AdminCredentials, AdminKeyCheck
from ..core.errors import JSON_HEADERS, RouterError, quoted, render_error
from ..net.server.connection import HTTPLimits, Request, ServerConnection
from ..net.server.listeners import serve_alone
from .fleet import Fleet
from .ingress import backend_detail
from .proxy import RequestState, Served
from .reload import Outcome, Reconfigurer, ReloadUnavailable
from .versions import ConfigVersion

log = logging.getLogger("continuum.admin")

PREFIX: Final = "/admin/"
#: ``?wait=`` on drain and delete waits at most this long.
MAX_WAIT: Final = 300.0

_encode = msgspec.json.Encoder().encode
_TEXT_HEADERS: Final = {
    "yaml": [(b"content-type", b"application/yaml; charset=utf-8")],
    "toml": [(b"content-type", b"application/toml; charset=utf-8")],
}
_UNAUTHORIZED: Final = "Admin API: missing or invalid credentials"
_SECTIONS: Final = tuple(f.name for f in msgspec.structs.fields(Config) if f.name != "source")


def _time(seconds: float) -> str:
    return _dt.datetime.fromtimestamp(seconds, _dt.UTC).isoformat(timespec="seconds")


def peer_of(conn: ServerConnection) -> tuple[str, bool]:
    """The client's address as text, and whether it is local (loopback or a Unix socket),
    from ``conn.peer_address()`` (through TLS; the ASGI scope's ``client`` on the hypercorn
    front)."""
    peer = conn.peer_address()
    if isinstance(peer, tuple) and peer:
        host = str(peer[0])
        try:
            local = ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            local = False
        shown = f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
        return shown, local
    if isinstance(peer, str | bytes):
        return "unix socket", True
    return "unknown", False


def label(path: str) -> str:
    """The ``endpoint`` label of an admin path in the metrics (a route pattern)."""
    parts = path[len(PREFIX):].split("/")
    if parts[0] == "backends" and len(parts) >= 2 and parts[1]:
        if len(parts) == 2:
            return "/admin/backends/{name}"
        if len(parts) == 3 and parts[2] == "drain":
            return "/admin/backends/{name}/drain"
        return "other"
    if parts[:2] == ["config", "rollback"] and len(parts) == 3:
        return "/admin/config/rollback/{version}"
    fixed = {"status", "config", "backends", "config/full", "config/reload", "config/history",
             "config/export"}
    rest = "/".join(parts)
    return PREFIX + rest if rest in fixed else "other"


def _outcome(outcome: Outcome) -> dict[str, Any]:
    return {
        "version": outcome.version,
        "previous_version": outcome.previous,
        "changed": outcome.changed,
        "dry_run": outcome.dry_run,
        "source": outcome.source,
        "summary": outcome.summary,
        "changes": [{"path": c.path, "kind": c.kind, "old": c.old, "new": c.new}
                    for c in outcome.changes],
        "needs_restart": list(outcome.needs_restart),
    }


def _query(request: Request) -> dict[str, str]:
    """The query's parameters (the last value of each)."""
    return {k: v[-1] for k, v in parse_qs(request.query, keep_blank_values=True).items()}


def _flag(query: dict[str, str], name: str) -> bool:
    value = query.get(name)
    if value is None:
        return False
    if value.lower() in ("", "1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise RouterError(400, f"?{name}= takes true or false, got {quoted(value)}", param=name)


def _seconds(query: dict[str, str], name: str) -> float:
    value = query.get(name)
    if value is None:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0.0 <= seconds <= MAX_WAIT:
        raise RouterError(400, f"?{name}= takes seconds from 0 to {MAX_WAIT:g}, got "
                          f"{quoted(value)}", param=name)
    return seconds


def _invalid(exc: ConfigError) -> RouterError:
    return RouterError(422, str(exc), code="invalid_config", param=exc.path or None)


@final
class AdminAPI:
    """The handler of every path under ``/admin/`` (mounted on the Ingress, or served on
    ``admin.bind_address``)."""

    def __init__(self, reconfigurer: Reconfigurer, fleet: Fleet,
                 key_check: AdminKeyCheck | None = None, worker: int | None = None) -> None:
        self.reconfigurer = reconfigurer
        self.fleet = fleet
        #: This process's index among ``server.workers`` (None: a router alone).
        self.worker = worker
        #: The seam for client keys with the ``admin`` scope (the access control's).
        self.key_check = key_check
        self.credentials = self._credentials(reconfigurer.current)
        reconfigurer.register(["admin.auth"], self._configure)

    def set_key_check(self, key_check: AdminKeyCheck | None) -> None:
        """Let ``admin.auth.method: api_key`` take client keys with the ``admin`` scope
        (the router passes the access control's check at start)."""
        self.key_check = key_check
        self.credentials = self._credentials(self.reconfigurer.current)

    def _credentials(self, config: Config) -> AdminCredentials:
        auth = config.admin.auth
        return AdminCredentials(auth.method, token=auth.token, username=auth.username,
                                password=auth.password, key_check=self.key_check)

    def _configure(self, old: Config, new: Config) -> None:
        self.credentials = self._credentials(new)

    # -- dispatch ------------------------------------------------------------------------

    async def handle(self, request: Request, conn: ServerConnection,
                     state: RequestState | None = None) -> Served:
        """Answer one admin request; the status is returned for the access log and
        metrics (RouterErrors are answered by the caller)."""
        who = self._authenticate(request, conn)
        path = request.path
        method = "GET" if request.method == "HEAD" else request.method
        parts = path[len(PREFIX):].split("/")
        routes: dict[str, Callable[[], Any]]
        if parts == ["status"]:
            routes = {"GET": partial(self._status, conn)}
        elif parts in (["config"], ["config", "full"]):
            routes = {"GET": partial(self._get_config, request, conn)}
            if len(parts) == 1:
                routes["PUT"] = partial(self._put_config, request, conn, who)
                routes["PATCH"] = partial(self._patch_config, request, conn, who)
        elif parts == ["config", "reload"]:
            routes = {"POST": partial(self._reload, conn, who)}
        elif parts == ["config", "history"]:
            routes = {"GET": partial(self._history, conn)}
        elif parts == ["config", "export"]:
            routes = {"GET": partial(self._export, request, conn)}
        elif len(parts) == 3 and parts[:2] == ["config", "rollback"]:
            routes = {"POST": partial(self._rollback, request, conn, who, parts[2])}
        elif parts == ["backends"]:
            routes = {"GET": partial(self._backends, conn),
                      "POST": partial(self._add_backend, request, conn, who)}
        elif len(parts) == 2 and parts[0] == "backends" and parts[1]:
            name = unquote(parts[1])
            routes = {"GET": partial(self._backend, conn, name),
                      "PATCH": partial(self._patch_backend, request, conn, who, name),
                      "DELETE": partial(self._delete_backend, request, conn, who, name)}
        elif len(parts) == 3 and parts[0] == "backends" and parts[1] and parts[2] == "drain":
            routes = {"POST": partial(self._drain, request, conn, who, unquote(parts[1]))}
        else:
            raise RouterError(404, f"Unknown admin path: {request.method} {quoted(path)}",
                              code="not_found")
        route = routes.get(method)
        if route is None:
            allow = ", ".join(["GET, HEAD" if m == "GET" else m for m in routes])
            raise RouterError(405, f"Method {request.method} not allowed on {path}; use "
                              f"{allow}", headers=[(b"allow", allow.encode())])
        status = await route()
        return Served(status or 200, "", "", 0.0, 0)

    def _authenticate(self, request: Request, conn: ServerConnection) -> str:
        """Who the caller is, for the audit line (``bearer token from 10.0.0.5:51234``)."""
        credentials = self.credentials
        peer, local = peer_of(conn)
        if credentials.open:
            if not local:
                raise RouterError(403, "The admin API has no credentials configured "
                                  "(admin.auth.method: none), so it answers only local "
                                  "clients (loopback or a Unix socket)", code="forbidden")
            return f"anonymous from {peer}"
        who = credentials.check(request.header(b"authorization"), request.header(b"x-api-key"))
        if who is None:
            raise RouterError(401, _UNAUTHORIZED, code="invalid_credentials",
                              headers=[(b"www-authenticate", credentials.realm)])
        return f"{who} from {peer}"

    # -- reading -------------------------------------------------------------------------

    async def _send(self, conn: ServerConnection, body: Any, status: int = 200) -> None:
        await conn.send_response(status, JSON_HEADERS, _encode(body))

    def _entry(self) -> ConfigVersion | None:
        return self.reconfigurer.store.get(self.reconfigurer.version)

    async def _status(self, conn: ServerConnection) -> None:
        r = self.reconfigurer
        entry = self._entry()
        actors = self.fleet.actors()
        healthy = sum(1 for a in actors if a.healthy)
        last = r.last
        await self._send(conn, {
            "status": ("healthy" if healthy == len(actors) and actors else
                       "degraded" if healthy else "unhealthy"),
            "version": r.version,
            "worker": self.worker,
            "updated_at": _time(entry.time) if entry else None,
            "source": entry.source if entry else None,
            "config_file": r.config_file,
            "hot_reload": r.current.hot_reload.enabled and r.config_file is not None,
            "pending_restart": list(r.pending_restart),
            "backends": {"in_service": len(actors), "healthy": healthy,
                         "draining": len(self.fleet.leaving),
                         "disabled": sum(1 for b in r.current.backends if not b.enabled)},
            "last_change": None if last is None else _outcome(last),
        })

    async def _get_config(self, request: Request, conn: ServerConnection) -> None:
        r = self.reconfigurer
        document = masked_builtins(r.current)
        section = _query(request).get("section")
        if section is not None:
            if section not in document:
                raise RouterError(404, f"No config section {quoted(section)}; sections: "
                                  f"{', '.join(_SECTIONS)}", code="not_found", param="section")
            document = {section: document[section]}
        entry = self._entry()
        await self._send(conn, {
            "version": r.version,
            "updated_at": _time(entry.time) if entry else None,
            "source": entry.source if entry else None,
            "pending_restart": list(r.pending_restart),
            "config": document,
        })

    async def _history(self, conn: ServerConnection) -> None:
        versions = [{"version": v.version, "time": _time(v.time), "source": v.source,
                     "who": v.who, "summary": v.summary, "needs_restart": list(v.needs_restart)}
                    for v in reversed(self.reconfigurer.store.history())]
        await self._send(conn, {"version": self.reconfigurer.version, "versions": versions})

    async def _export(self, request: Request, conn: ServerConnection) -> None:
        query = _query(request)
        form = query.get("format", "yaml").lower()
        if form not in ("yaml", "json", "toml"):
            raise RouterError(400, f"?format= takes yaml, json or toml, got {quoted(form)}",
                              param="format")
        config = self.reconfigurer.current
        if "version" in query:
            entry = self.reconfigurer.store.get(self._version(query["version"]))
            if entry is None:
                raise RouterError(404, f"Version {quoted(query['version'])} is not in the "
                                  "history", code="not_found", param="version")
            config = entry.config
        document = masked_builtins(config)
        if form == "json":
            await self._send(conn, document)
            return
        if form == "toml":
            text = dump_toml(document)
        else:
            text = yaml.safe_dump(document, sort_keys=False, default_flow_style=False,
                                  allow_unicode=True)
        await conn.send_response(200, _TEXT_HEADERS[form], text.encode())

    async def _backends(self, conn: ServerConnection) -> None:
        await self._send(conn, {"version": self.reconfigurer.version,
                                "backends": self._backend_list()})

    async def _backend(self, conn: ServerConnection, name: str) -> None:
        entries = [b for b in self._backend_list() if b["name"] == name]
        if not entries:
            raise self._no_backend(name)
        # the one in service (or disabled) first, then what is still draining
        await self._send(conn, {"version": self.reconfigurer.version, **entries[0],
                                "draining": entries[1:]})

    def _backend_list(self) -> list[dict[str, Any]]:
        """Every backend of the config in order (in service, or ``disabled``), each
        followed by any actor of its name still draining; then removed ones draining."""
        members = self.fleet.members
        leaving: dict[str, list[dict[str, Any]]] = {}
        for entry in self.fleet.leaving:
            detail = {**backend_detail(entry.actor), "state": "draining",
                      "leaving": entry.why, "draining_since": _time(entry.since),
                      "weight": entry.actor.weight, "enabled": entry.why != "disabled"}
            leaving.setdefault(entry.actor.name, []).append(detail)
        out: list[dict[str, Any]] = []
        for backend in self.reconfigurer.current.backends:
            member = members.get(backend.name)
            if member is not None:
                out.append({**backend_detail(member.actor), "state": "active",
                            "weight": member.actor.weight, "enabled": True})
            else:
                out.append({"name": backend.name, "state": "disabled", "type": backend.type,
                            "weight": backend.weight, "enabled": False,
                            "models": list(backend.models), "in_flight": 0})
            out.extend(leaving.pop(backend.name, []))
        for rest in leaving.values():
            out.extend(rest)
        return out

    # -- changing ------------------------------------------------------------------------

    def _document(self, request: Request, source: str) -> dict[str, Any]:
        if len(request.body) > MAX_DOCUMENT:
            raise RouterError(413, f"Admin request bodies are limited to "
                              f"{MAX_DOCUMENT // 1024} KiB (a config is a few KiB)")
        content_type = (request.header(b"content-type") or b"").decode("latin-1")
        try:
            return parse_document(request.body, content_type, source)
        except ConfigError as exc:
            raise RouterError(400, str(exc), code="invalid_document") from None

    def _validate(self, document: dict[str, Any], source: str) -> Config:
        try:
            restored = restore_secrets(document, self.reconfigurer.current, source)
            # A relative api_keys_file is next to the config file, as when it is loaded.
            config_file = self.reconfigurer.config_file
            directory = None if config_file is None else os.path.dirname(
                os.path.abspath(config_file))
            return config_from_dict(restored, source=source, directory=directory)
        except ConfigError as exc:
            raise _invalid(exc) from None

    async def _change(self, conn: ServerConnection, candidate: Config, source: str, who: str,
                      dry_run: bool, status: int = 200) -> Outcome:
        outcome = await self.reconfigurer.propose(candidate, source=source, who=who,
                                                  dry_run=dry_run)
        await self._send(conn, _outcome(outcome), status)
        return outcome

    async def _put_config(self, request: Request, conn: ServerConnection, who: str) -> None:
        source = "PUT /admin/config"
        dry_run = _flag(_query(request), "dry_run")
        document = self._document(request, source)
        await self._change(conn, self._validate(document, source), source, who, dry_run)

    async def _patch_config(self, request: Request, conn: ServerConnection, who: str) -> None:
        source = "PATCH /admin/config"
        dry_run = _flag(_query(request), "dry_run")
        patch = canonical_patch(self._document(request, source))
        document = merge_patch(editable_document(self.reconfigurer.current), patch)
        await self._change(conn, self._validate(document, source), source, who, dry_run)

    async def _reload(self, conn: ServerConnection, who: str) -> None:
        try:
            outcome = await self.reconfigurer.reload(source="POST /admin/config/reload",
                                                     who=who)
        except ReloadUnavailable as exc:
            raise RouterError(409, str(exc), code="no_config_file") from None
        except ConfigError as exc:
            raise _invalid(exc) from None
        await self._send(conn, _outcome(outcome))

    def _version(self, text: str) -> int:
        value = text.removeprefix("v")
        if not value.isdigit() or len(value) > 18:
            raise RouterError(400, f"Expected a version number, got {quoted(text)}",
                              param="version")
        return int(value)

    async def _rollback(self, request: Request, conn: ServerConnection, who: str,
                        version: str) -> None:
        number = self._version(unquote(version))
        entry = self.reconfigurer.store.get(number)
        if entry is None:
            raise RouterError(404, f"Version {number} is not in the history (the last "
                              f"{len(self.reconfigurer.store.history())} versions are kept)",
                              code="not_found", param="version")
        await self._change(conn, entry.config, f"rollback to v{number}", who,
                           _flag(_query(request), "dry_run"))

    def _no_backend(self, name: str) -> RouterError:
        return RouterError(404, f"No backend named {quoted(name)}", code="not_found")

    def _backend_index(self, document: dict[str, Any], name: str) -> int:
        for i, entry in enumerate(document["backends"]):
            if entry.get("name") == name:
                return i
        raise self._no_backend(name)

    async def _add_backend(self, request: Request, conn: ServerConnection, who: str) -> int:
        source = "POST /admin/backends"
        dry_run = _flag(_query(request), "dry_run")
        entry = self._document(request, source)
        name = entry.get("name")
        if any(b.name == name for b in self.reconfigurer.current.backends):
            raise RouterError(409, f"A backend named {quoted(str(name))} exists already; "
                              "change it with PATCH /admin/backends/{name}", code="conflict")
        document = editable_document(self.reconfigurer.current)
        document["backends"].append(entry)
        status = 200 if dry_run else 201
        outcome = await self._change(conn, self._validate(document, source), source, who,
                                     dry_run, status)
        log.debug("backend %s added as v%d", name, outcome.version)
        return status

    async def _patch_backend(self, request: Request, conn: ServerConnection, who: str,
                             name: str) -> None:
        source = f"PATCH /admin/backends/{name}"
        dry_run = _flag(_query(request), "dry_run")
        document = editable_document(self.reconfigurer.current)
        index = self._backend_index(document, name)
        patch = self._document(request, source)
        if patch.get("name", name) != name:
            raise RouterError(422, "A backend cannot be renamed: add one under the new name "
                              "and delete this one", code="invalid_config",
                              param=f"backends[{index}].name")
        document["backends"][index] = merge_patch(document["backends"][index], patch)
        await self._change(conn, self._validate(document, source), source, who, dry_run)

    async def _drain(self, request: Request, conn: ServerConnection, who: str,
                     name: str) -> int:
        return await self._take_out(request, conn, who, name, remove=False)

    async def _delete_backend(self, request: Request, conn: ServerConnection, who: str,
                              name: str) -> int:
        return await self._take_out(request, conn, who, name, remove=True)

    async def _take_out(self, request: Request, conn: ServerConnection, who: str, name: str,
                        *, remove: bool) -> int:
        """Drain (``enabled: false``) or delete a backend: it leaves service at once, its
        requests in flight finish; with ``?wait=S`` the answer waits (up to S seconds)
        until they have: 200 once drained, 202 while requests are still running."""
        query = _query(request)
        wait = _seconds(query, "wait")
        dry_run = _flag(query, "dry_run")
        source = f"{request.method} {request.path}"
        document = editable_document(self.reconfigurer.current)
        index = self._backend_index(document, name)
        if remove:
            del document["backends"][index]
        else:
            document["backends"][index]["enabled"] = False
        candidate = self._validate(document, source)
        outcome = await self.reconfigurer.propose(candidate, source=source, who=who,
                                                  dry_run=dry_run)
        drained = dry_run or await self.fleet.wait_drained(name, wait)
        in_flight = sum(e.actor.in_flight for e in self.fleet.leaving if e.actor.name == name)
        status = 200 if drained else 202
        await self._send(conn, {
            **_outcome(outcome),
            "backend": name,
            "state": "removed" if remove and drained else "disabled" if drained else "draining",
            "in_flight": in_flight,
        }, status)
        return status


async def serve_admin(
    admin: AdminAPI,
    address: str,
    health: Callable[[Request, ServerConnection, RequestState], Any],
    *,
    shutdown_timeout: float = 5.0,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve only the admin API (and ``/admin/health``) on ``address`` (``admin.bind_address``)
    until cancelled; ``nursery.start`` returns the bound addresses."""

    async def handle(request: Request, conn: ServerConnection) -> None:
        state = RequestState(b"admin", 0.0)
        try:
            if request.path == "/admin/health":
                if request.method not in ("GET", "HEAD"):
                    raise RouterError(405, f"Method {request.method} not allowed; use GET",
                                      headers=[(b"allow", b"GET, HEAD")])
                await health(request, conn, state)
            elif request.path.startswith(PREFIX):
                await admin.handle(request, conn, state)
            else:
                raise RouterError(404, f"Unknown path: {request.method} {quoted(request.path)}",
                                  code="not_found")
        except RouterError as exc:
            if not conn.responded:
                await conn.send_response(exc.status, JSON_HEADERS + exc.headers, exc.body())

    await serve_alone(
        address, handle, HTTPLimits(max_body_size=MAX_DOCUMENT + 1),
        shutdown_timeout=shutdown_timeout, render_error=render_error,
        announce=lambda bound: log.info("admin API on http://%s%s", bound, PREFIX),
        task_status=task_status)
