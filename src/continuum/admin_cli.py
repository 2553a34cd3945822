"""``trio-continuum admin``: the admin API from the command line (httpx).

``status``, ``backends``, ``drain NAME``, ``reload``, ``config [--section S]``, ``history``
and ``rollback V``, against ``--url`` (``CONTINUUM_ADMIN_URL``) with ``--token``
(``CONTINUUM_ADMIN_TOKEN``). Answers print as tables (or YAML for ``config``); ``--json``
prints the API's JSON as it is. The token is never printed, and neither is any secret: the
API masks them.

Exit status: 0 done; 1 the API refused (the message is printed) or could not be reached;
2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from .config import dump_toml

DEFAULT_URL = "http://127.0.0.1:8080"
ENV_URL = "CONTINUUM_ADMIN_URL"
ENV_TOKEN = "CONTINUUM_ADMIN_TOKEN"
ENV_AUTH = "CONTINUUM_ADMIN_AUTH"
AUTH_METHODS = ("bearer_token", "api_key", "basic")


class AdminError(Exception):
    """The API refused, or could not be reached: the message says which."""


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The connection options; given to ``admin`` and to each command, so they may come
    before or after it (a command's own, when given, win)."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--url", default=default(os.environ.get(ENV_URL, DEFAULT_URL)),
                        help=f"the router's admin URL (env {ENV_URL}; default: {DEFAULT_URL})")
    parser.add_argument("--token", default=default(None),
                        help=f"the admin credential (env {ENV_TOKEN}): the token, or "
                        "user:password with --auth basic")
    parser.add_argument("--auth", choices=AUTH_METHODS,
                        default=default(os.environ.get(ENV_AUTH, "bearer_token")),
                        help="how the credential is sent, as admin.auth.method says (env "
                        f"{ENV_AUTH}; default: bearer_token)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print the API's JSON answer instead of a table")
    parser.add_argument("--timeout", type=float, default=default(60.0), metavar="SECONDS",
                        help="give up on an answer after this long (default: 60)")


def add_admin_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        child = sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".")
        _common(child, suppress=True)
        return child

    command("status", "version, health and pending restarts")
    command("backends", "every backend: state, health, breaker, load")
    drain = command("drain", "take a backend out of service; its requests finish")
    drain.add_argument("name")
    drain.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                       help="wait this long for its requests to finish (default: "
                       "%(default)s; 0: do not wait)")
    command("reload", "read the config file again and apply it")
    config = command("config", "print the config in force (secrets masked)")
    config.add_argument("--section", help="only this section, e.g. routing or backends")
    config.add_argument("--toml", action="store_true",
                        help="print the config as TOML instead of YAML")
    command("history", "the last config versions")
    rollback = command("rollback", "make an earlier version the config again")
    rollback.add_argument("version", help="a version number from history (3 or v3)")
    rollback.add_argument("--dry-run", action="store_true",
                          help="only say what it would change")


def _headers(args: argparse.Namespace) -> dict[str, str]:
    token = args.token if args.token is not None else os.environ.get(ENV_TOKEN)
    if not token:
        return {}
    if args.auth == "api_key":
        return {"x-api-key": token}
    if args.auth == "basic":
        import base64

        return {"authorization": "Basic " + base64.b64encode(token.encode()).decode()}
    return {"authorization": f"Bearer {token}"}


def _call(args: argparse.Namespace, method: str, path: str,
          params: dict[str, str] | None = None) -> Any:
    """One API call; the decoded JSON answer (or the text, for YAML)."""
    import httpx

    url = args.url.rstrip("/")
    try:
        response = httpx.request(method, url + path, params=params, headers=_headers(args),
                                 timeout=args.timeout)
    except httpx.HTTPError as exc:
        raise AdminError(f"cannot reach {url}: {type(exc).__name__}: {exc}") from None
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        raise AdminError(f"{method} {path}: {response.status_code}: {message}")
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.json()
    return response.text


def _table(rows: Sequence[Sequence[object]], head: Sequence[str]) -> str:
    cells = [[str(c) for c in head], *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def _outcome_text(answer: dict[str, Any]) -> str:
    lines = []
    if answer.get("dry_run"):
        lines.append(f"dry run: would make v{answer['version']}: {answer['summary']}"
                     if answer["changed"] else f"dry run: no change to v{answer['version']}")
    elif answer["changed"]:
        lines.append(f"v{answer['previous_version']} -> v{answer['version']}: "
                     f"{answer['summary']}")
    else:
        lines.append(f"unchanged at v{answer['version']}")
    for path in answer.get("needs_restart", []):
        lines.append(f"needs a restart: {path}")
    return "\n".join(lines)


def _status(args: argparse.Namespace) -> tuple[Any, str]:
    s = _call(args, "GET", "/admin/status")
    b = s["backends"]
    lines = [f"status: {s['status']}",
             f"config: v{s['version']} ({s['source']}, {s['updated_at']})",
             f"backends: {b['in_service']} in service, {b['healthy']} healthy, "
             f"{b['draining']} draining, {b['disabled']} disabled",
             f"hot reload: {'on' if s['hot_reload'] else 'off'}"
             + (f" ({s['config_file']})" if s["config_file"] else "")]
    if s.get("worker") is not None:
        lines.append(f"answered by worker {s['worker']}")
    if s["pending_restart"]:
        lines.append(f"needs a restart: {', '.join(s['pending_restart'])}")
    return s, "\n".join(lines)


def _backends(args: argparse.Namespace) -> tuple[Any, str]:
    answer = _call(args, "GET", "/admin/backends")
    rows = []
    for b in answer["backends"]:
        breaker = b.get("circuit_breaker", {}).get("state", "-")
        latency = b.get("latency_ms")
        rows.append([b["name"], b["state"], b.get("status", "-"), breaker, b["in_flight"],
                     "-" if latency is None else f"{latency:.1f}ms", b["weight"],
                     ",".join(b.get("models", [])) or "-"])
    head = ["NAME", "STATE", "HEALTH", "BREAKER", "IN-FLIGHT", "LATENCY", "WEIGHT", "MODELS"]
    return answer, f"config v{answer['version']}\n" + _table(rows, head)


def _drain(args: argparse.Namespace) -> tuple[Any, str]:
    answer = _call(args, "POST", f"/admin/backends/{args.name}/drain",
                   {"wait": f"{args.wait:g}"})
    state = answer["state"]
    text = (f"backend {args.name}: drained (v{answer['version']})" if state != "draining"
            else f"backend {args.name}: draining, {answer['in_flight']} request(s) still in "
                 f"flight (v{answer['version']})")
    return answer, text


def _reload(args: argparse.Namespace) -> tuple[Any, str]:
    answer = _call(args, "POST", "/admin/config/reload")
    return answer, _outcome_text(answer)


def _config(args: argparse.Namespace) -> tuple[Any, str]:
    if args.section:
        answer = _call(args, "GET", "/admin/config", {"section": args.section})
        if args.toml:
            return answer, dump_toml(answer["config"]).rstrip()
        return answer, yaml.safe_dump(answer["config"], sort_keys=False).rstrip()
    if args.json:
        answer = _call(args, "GET", "/admin/config")
        return answer, ""
    form = "toml" if args.toml else "yaml"
    text = _call(args, "GET", "/admin/config/export", {"format": form})
    return None, str(text).rstrip()


def _history(args: argparse.Namespace) -> tuple[Any, str]:
    answer = _call(args, "GET", "/admin/config/history")
    rows = [[f"v{v['version']}" + ("*" if v["version"] == answer["version"] else ""),
             v["time"], v["source"], v["who"] or "-", v["summary"]]
            for v in answer["versions"]]
    return answer, _table(rows, ["VERSION", "TIME", "SOURCE", "WHO", "SUMMARY"])


def _rollback(args: argparse.Namespace) -> tuple[Any, str]:
    version = args.version.removeprefix("v")
    params = {"dry_run": "true"} if args.dry_run else None
    answer = _call(args, "POST", f"/admin/config/rollback/{version}", params)
    return answer, _outcome_text(answer)


COMMANDS: dict[str, Callable[[argparse.Namespace], tuple[Any, str]]] = {
    "status": _status, "backends": _backends, "drain": _drain, "reload": _reload,
    "config": _config, "history": _history, "rollback": _rollback,
}


def cmd_admin(args: argparse.Namespace) -> int:
    try:
        answer, text = COMMANDS[args.admin_command](args)
    except AdminError as exc:
        print(f"trio-continuum admin: {exc}", file=sys.stderr)
        return 1
    if args.json and answer is not None:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
    else:
        print(text)
    return 0
