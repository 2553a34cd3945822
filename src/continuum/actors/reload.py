"""Reconfigurer: the config a router runs with, its versions, and how a new config takes
effect while requests run.

Every change, whatever brought it (``SIGHUP``, the config file changing with
``hot_reload.enabled``, ``POST /admin/config/reload``, ``PUT``/``PATCH /admin/config``, an
admin call on a backend, a rollback), goes through :meth:`Reconfigurer.propose`:

1. the candidate was validated like a file (a :class:`~continuum.config.ConfigError` with
   its key path rejects it whole; the old config keeps serving);
2. it is compared with the config in force, key path by key path;
3. changes that no *applier* covers cannot take effect live (``server.bind_address``,
   ``server.workers``, ...): they are reported as needing a restart, logged, and left as
   they were in the new version (a version always says what is in force);
4. the rest becomes the next version, and each applier whose key paths changed applies it:
   the registry of appliers (:meth:`Reconfigurer.register`) is the seam a new section
   plugs into (the client keys and rate limits of the access-control work, for one).

Changes are applied one at a time (a lock), shielded from cancellation once they start, so
a version is never half applied. Requests already running keep what they read when they
started (their backend, their timeouts); new requests see the new version.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, final

import msgspec
import trio

from ..config import (
    Change,
    Config,
    ConfigError,
    HotReloadConfig,
    Keys,
    LoggingConfig,
    carry,
    covered,
    diff_configs,
    load_config,
    summarize,
)
from .access import AccessControl, needed
from .catalog import ModelCatalog
from .dedup import Deduplicator
from .fleet import Fleet
from .ingress import Ingress
from .metrics import MetricsSink, metrics_auth_header
from .proxy import Proxy
from .realtime import RealtimeGateway
from .router import Router
from .versions import ConfigVersion, VersionStore

log = logging.getLogger("continuum.reload")
#: One line per change made (or refused) from outside: who, what, the versions before and
#: after. Never a secret: summaries show secrets as ***.
audit = logging.getLogger("continuum.audit")

#: What a section's applier is called with: the config in force, and the next one.
Applier = Callable[[Config, Config], "Awaitable[None] | None"]
#: Run on every reload (``SIGHUP``, the file watcher, ``POST /admin/config/reload``), whether
#: the config changed or not: e.g. reading TLS certificates from disk again.
ReloadHook = Callable[[], "Awaitable[None] | None"]


class ReloadHooks(msgspec.Struct, frozen=True):
    """What the program running the router adds to reloading (the CLI sets both)."""

    #: Applied to the config read from the file on every reload: the command line's
    #: overrides (``--bind``, ``--log-level``) stay in force.
    adjust: Callable[[Config], Config] | None = None
    #: Applies ``logging`` (level, format). Logging is process-wide: an embedding program
    #: configures it itself, and without this hook ``logging.level``/``format`` are its own.
    logging: Callable[[LoggingConfig], None] | None = None
    #: Runs after a new version is in force (whoever made it: a reload, the admin API, a
    #: rollback, a sibling worker). The CLI re-freezes the heap here (``core.heap``):
    #: process-wide, like logging, so an embedding program decides for itself.
    applied: Callable[[], None] | None = None


class ReloadUnavailable(Exception):
    """A reload was asked of a router that was not started from a config file."""


class Outcome(msgspec.Struct, frozen=True):
    """What a proposed config came to."""

    version: int  # the version in force afterwards
    previous: int
    changed: bool
    source: str
    summary: str
    changes: tuple[Change, ...] = ()
    #: Key paths that changed but take effect only after a restart (kept as they were).
    needs_restart: tuple[str, ...] = ()
    dry_run: bool = False


@final
class _Pending:
    """A file reload not started yet, which later triggers join instead of queueing."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.outcome: Outcome | None = None
        self.error: Exception | None = None

    async def result(self) -> Outcome:
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.outcome is not None
        return self.outcome


_START_SOURCE: Final = "start"


def first_version(config: Config) -> ConfigVersion:
    return ConfigVersion(1, time.time(), _START_SOURCE, "", "the config the router started "
                         "with", config)


@final
class Reconfigurer:
    def __init__(self, store: VersionStore, start: ConfigVersion, *,
                 config_file: str | None = None, hooks: ReloadHooks | None = None,
                 notify: Callable[[], Awaitable[None]] | None = None) -> None:
        self.store = store
        #: The config in force (its effective values) and its version: at first, the
        #: version the router was built from.
        self.current: Config = start.config
        self.version = start.version
        #: The file ``reload`` reads; None when the router was not started from one.
        self.config_file = config_file
        self.hooks = hooks or ReloadHooks()
        #: Key paths of the last change that need a restart to take effect.
        self.pending_restart: tuple[str, ...] = start.needs_restart
        #: The last change that was made (not a dry run), for ``GET /admin/status``.
        self.last: Outcome | None = None
        self._notify = notify
        self._appliers: list[tuple[tuple[Keys, ...], Applier]] = []
        self._reload_hooks: list[ReloadHook] = []
        self._lock = trio.Lock()
        self._pending: _Pending | None = None
        #: Set (and replaced) whenever a version was applied.
        self._applied = trio.Event()

    # -- the seams -----------------------------------------------------------------------

    def register(self, paths: Iterable[str], apply: Applier) -> None:
        """``apply(old, new)`` makes changes under the dotted key ``paths`` (``"routing"``,
        ``"metrics.auth"``) take effect live; it runs once per version that changes any of
        them, in registration order. Paths no applier covers need a restart."""
        prefixes = tuple(tuple(path.split(".")) for path in paths)
        self._appliers.append((prefixes, apply))

    def add_reload_hook(self, hook: ReloadHook) -> None:
        """``hook()`` runs on every reload, before the file is read (errors are logged)."""
        self._reload_hooks.append(hook)

    @property
    def live_paths(self) -> list[Keys]:
        return [prefix for prefixes, _ in self._appliers for prefix in prefixes]

    # -- changing the config -------------------------------------------------------------

    async def propose(self, candidate: Config, *, source: str, who: str,
                      dry_run: bool = False) -> Outcome:
        """Make ``candidate`` (already validated) the config in force, as far as it can
        be live; or with ``dry_run`` only say what that would change."""
        async with self._lock:
            outcome = await self._propose(candidate, source, who, dry_run)
        await self._tell_others(outcome)
        return outcome

    async def rollback(self, version: int, *, who: str) -> Outcome:
        """The config of ``version`` (one of the last 100) again, as a new version;
        LookupError when it is not kept."""
        entry = self.store.get(version)
        if entry is None:
            raise LookupError(f"version {version} is not in the history (the last "
                              f"{len(self.store.history())} versions are kept)")
        return await self.propose(entry.config, source=f"rollback to v{version}", who=who)

    async def reload(self, *, source: str, who: str) -> Outcome:
        """Read the config file again and make it the config in force. Triggers that
        arrive while a reload waits to start join it (a flood of them reads the file once
        or twice, not once each). Raises ConfigError (the file is invalid: nothing
        changed) or ReloadUnavailable."""
        if self.config_file is None:
            raise ReloadUnavailable("this router was not started from a config file, so "
                                    "there is none to reload")
        pending = self._pending
        if pending is not None:
            return await pending.result()
        pending = self._pending = _Pending()
        try:
            async with self._lock:
                self._pending = None  # from now on a trigger needs another read
                await self._run_reload_hooks()
                try:
                    candidate = self._read_file()
                except ConfigError as exc:
                    log.error("config reload (%s) rejected, still on v%d: %s", source,
                              self.version, exc)
                    audit.info("%s by %s: rejected, still v%d: %s", source, who,
                               self.version, exc)
                    raise
                pending.outcome = await self._propose(candidate, source, who, False)
        except Exception as exc:
            pending.error = exc
            raise
        finally:
            if pending.outcome is None and pending.error is None:
                pending.error = RuntimeError("the reload was cancelled")
            pending.done.set()
        await self._tell_others(pending.outcome)
        return pending.outcome

    async def _tell_others(self, outcome: Outcome) -> None:
        """Workers: the siblings apply a new version before the change is answered. Done
        outside the lock: a sibling telling us of its own change meanwhile must get in."""
        if outcome.changed and not outcome.dry_run and self._notify is not None:
            await self._notify()

    def _read_file(self) -> Config:
        assert self.config_file is not None
        config = load_config(self.config_file)
        adjust = self.hooks.adjust
        return adjust(config) if adjust is not None else config

    async def _run_reload_hooks(self) -> None:
        for hook in self._reload_hooks:
            try:
                result = hook()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("a reload hook failed")

    async def sync(self) -> int:
        """Apply the latest version of a shared store if it is newer than ours (another
        worker made it); returns the version in force."""
        async with self._lock:
            with trio.CancelScope(shield=True):
                await self._adopt_latest()
        return self.version

    async def follow(self, stamp: Callable[[], object], period: float = 1.0) -> None:
        """Task (workers): look at the shared store every ``period`` and apply a version
        another worker made, in case its word did not reach us (we were busy or starting)."""
        seen = stamp()
        await self.sync()  # a version made while this worker was starting
        while True:
            await trio.sleep(period)
            now = stamp()
            if now != seen:
                seen = now
                await self.sync()

    # -- internals -----------------------------------------------------------------------

    def _plan(self, candidate: Config, source: str, version: int
              ) -> tuple[Outcome, Config, list[Change]]:
        old = self.current
        changes = diff_configs(old, candidate)
        live_paths = self.live_paths
        live = [c for c in changes if covered(c.keys, live_paths)]
        later = [c for c in changes if not covered(c.keys, live_paths)]
        effective = candidate
        for change in later:
            effective = carry(effective, old, change.keys)
        needs_restart = tuple(dict.fromkeys(c.path for c in later))
        outcome = Outcome(
            version=version if live else self.version, previous=self.version,
            changed=bool(live), source=source, summary=summarize(live),
            changes=tuple(live), needs_restart=needs_restart,
        )
        return outcome, effective, live

    async def _propose(self, candidate: Config, source: str, who: str,
                       dry_run: bool) -> Outcome:
        if dry_run:
            outcome, _, _ = self._plan(candidate, source, self.version + 1)
            return msgspec.structs.replace(outcome, dry_run=True)
        with trio.CancelScope(shield=True):  # never half applied
            async with self.store.exclusive():
                await self._adopt_latest()  # another worker may have moved on
                version = self.version + 1
                outcome, effective, live = self._plan(candidate, source, version)
                if outcome.changed:
                    self.store.append(ConfigVersion(
                        version, time.time(), source, who, outcome.summary, effective,
                        outcome.needs_restart))
                    await self._apply(effective, version, live)
        self.pending_restart = outcome.needs_restart
        self.last = outcome
        self._log(outcome, who)
        return outcome

    async def _adopt_latest(self) -> None:
        latest = self.store.latest()
        if latest.version <= self.version:
            return
        _, effective, live = self._plan(latest.config, latest.source, latest.version)
        log.info("config v%d -> v%d (%s, made by another worker): %s", self.version,
                 latest.version, latest.source, latest.summary)
        await self._apply(effective, latest.version, live)

    async def _apply(self, new: Config, version: int, changes: list[Change]) -> None:
        old = self.current
        for prefixes, apply in self._appliers:
            if not any(covered(c.keys, prefixes) for c in changes):
                continue
            try:
                result = apply(old, new)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("applying v%d to %s failed; the rest applies",
                              version, ", ".join(".".join(p) for p in prefixes))
        self.current = new
        self.version = version
        self._applied.set()
        self._applied = trio.Event()
        if self.hooks.applied is not None:
            try:
                self.hooks.applied()
            except Exception:
                log.exception("the hook run after applying v%d failed", version)

    def _log(self, outcome: Outcome, who: str) -> None:
        if outcome.changed:
            log.info("config v%d -> v%d (%s): %s", outcome.previous, outcome.version,
                     outcome.source, outcome.summary)
        else:
            log.info("config unchanged at v%d (%s)", outcome.version, outcome.source)
        if outcome.needs_restart:
            log.warning("config (%s): %s changed but take(s) effect only after a restart; "
                        "kept as before", outcome.source, ", ".join(outcome.needs_restart))
        restart = (f"; needs restart: {', '.join(outcome.needs_restart)}"
                   if outcome.needs_restart else "")
        audit.info("%s by %s: v%d -> v%d (%s)%s", outcome.source, who, outcome.previous,
                   outcome.version, outcome.summary, restart)

    # -- hot_reload: watching the file ---------------------------------------------------

    async def watch(self) -> None:
        """Task: while ``hot_reload.enabled`` (and there is a file), reload when the file
        changes. Follows ``hot_reload`` as versions change it."""
        while True:
            settings = self.current.hot_reload
            path = self.config_file
            if not settings.enabled or path is None:
                await self._hot_reload_changed(settings)
                continue
            import anyio  # only with hot_reload on: watchfiles' async API runs on anyio

            stop = anyio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_file, path, settings.debounce, stop)
                try:
                    await self._hot_reload_changed(settings)
                finally:
                    # The watcher thread sees this within one step; a reload it started
                    # finishes first (a cancel would not reach the thread anyway).
                    stop.set()

    async def _hot_reload_changed(self, settings: HotReloadConfig) -> None:
        while self.current.hot_reload == settings:
            await self._applied.wait()

    async def _watch_file(self, path: str, debounce: float, stop: Any) -> None:
        import watchfiles

        directory = os.path.dirname(os.path.abspath(path))
        last = _read_bytes(path)
        quiet = max(1, round(debounce * 1000))
        log.info("hot reload: watching %s (debounce %gs)", path, debounce)
        # The directory, not the file: an editor that saves by renaming a new file over
        # the old one replaces the inode a file watch would follow.
        async for _ in watchfiles.awatch(directory, watch_filter=None, step=quiet,
                                         debounce=max(quiet * 4, 1600), stop_event=stop,
                                         recursive=False):
            data = _read_bytes(path)
            if data == last:
                continue  # another file of the directory, or the same bytes again
            last = data
            with contextlib.suppress(ConfigError):  # logged; the next change is read again
                await self.reload(source="file change", who="hot reload")


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def register_sections(
    reconfigurer: Reconfigurer,
    *,
    fleet: Fleet,
    router: Router,
    proxy: Proxy,
    ingress: Ingress,
    catalog: ModelCatalog,
    sink: MetricsSink,
    dedup: Deduplicator | None,
    access: AccessControl,
    realtime: RealtimeGateway | None = None,
) -> None:
    """The appliers of the sections a router changes live (see docs/operations.md,
    "Changing a running router"). Everything else needs a restart: ``server.*``,
    ``http_client.*``, ``tracing.*``, ``metrics.enabled``/``endpoint``/``bind_address``,
    ``admin.bind_address``, ``responses``, ``files``, ``realtime.enabled``/
    ``max_message_size``, ``rate_limiting.storage`` and ``rate_limiting.redis``."""
    dedups = [dedup]

    async def backends(old: Config, new: Config) -> None:
        await fleet.apply(new)

    def routing(old: Config, new: Config) -> None:
        router.configure(new)

    def requests(old: Config, new: Config) -> None:
        settings = new.cache.deduplication
        if settings != old.cache.deduplication:
            dedups[0] = Deduplicator(settings.ttl) if settings.enabled else None
            sink.use_dedup(dedups[0])
        proxy.configure(new, dedups[0])

    def model_list(old: Config, new: Config) -> None:
        catalog.update(fleet.actors(), new.cache.model_cache_ttl, new.health_checks.timeout)

    def ingress_settings(old: Config, new: Config) -> None:
        """Logging (the process's handlers) and what the Ingress reads per request."""
        if reconfigurer.hooks.logging is not None and (
            new.logging.level != old.logging.level or new.logging.format != old.logging.format
        ):
            reconfigurer.hooks.logging(new.logging)
        ingress.configure(new)

    def metrics(old: Config, new: Config) -> None:
        sink.auth = metrics_auth_header(new.metrics)

    reconfigurer.register(
        ["backends", "health_checks", "circuit_breaker", "routing.weights"], backends)
    reconfigurer.register(["routing", "model_aliases", "fallbacks"], routing)
    reconfigurer.register(["request", "retry", "routing", "cache.deduplication"], requests)
    reconfigurer.register(["cache.model_cache_ttl"], model_list)
    reconfigurer.register(["logging", "metrics.optional_metrics"], ingress_settings)
    reconfigurer.register(["metrics.auth"], metrics)
    def keys_and_limits(old: Config, new: Config) -> None:
        access.configure(new)
        # Once in use it stays (a request it admitted settles with it); with nothing left
        # to check it answers at once.
        active = access if needed(new) or proxy.access is access else None
        ingress.access = active
        proxy.use_access(active)

    reconfigurer.register(
        ["api_keys", "rate_limiting.enabled", "rate_limiting.limits", "rate_limiting.whitelist",
         "rate_limiting.bypass_keys", "rate_limiting.trusted_proxies",
         "rate_limiting.default_token_reservation", "request"], keys_and_limits)
    reconfigurer.register(["cors"], lambda old, new: ingress.use_cors(new))
    if realtime is not None:
        rt = realtime
        reconfigurer.register(
            ["request", "retry", *(f"realtime.{key}" for key in (
                "max_sessions", "message_queue_size", "ping_interval", "ping_timeout",
                "connect_timeout", "close_timeout"))],
            lambda old, new: rt.configure(new))
    reconfigurer.register(["hot_reload"], lambda old, new: None)  # watch() follows it
