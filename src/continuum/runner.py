"""``trio-continuum run`` once its config is loaded: one router in this process (signals,
reloads, the collector), or the parent of ``server.workers`` processes.

:mod:`continuum.cli` imports this module only when ``run`` runs: it brings in trio and the
router's graph (the actors, the HTTP server, the translators, the metrics), which ``--help``,
``check``, ``generate-config``, ``admin`` and ``mock`` do without.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Callable, Sequence

import trio

from .actors.reload import ReloadHooks
from .actors.supervisor import RouterHandle, serve, serve_worker
from .actors.workers import WorkerEnvironment, run_workers
from .config import Config, ConfigError
from .core.heap import resettle, settle
from .observability.logs import configure_logging

log = logging.getLogger("continuum")


async def _reload_on_signal(handle: RouterHandle) -> None:
    with contextlib.suppress(ConfigError):  # logged: the old config keeps serving
        await handle.reconfigurer.reload(source="SIGHUP", who="signal")


async def _run(config: Config, worker: WorkerEnvironment | None = None,
               config_file: str | None = None, hooks: ReloadHooks | None = None) -> None:
    """Serve; the first SIGINT/SIGTERM drains gracefully, a second one stops at once;
    SIGHUP reloads the config file."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def serve_then_stop(
                task_status: trio.TaskStatus[RouterHandle] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                if worker is None:
                    await serve(config, config_file=config_file, hooks=hooks,
                                task_status=task_status)
                else:
                    await serve_worker(config, worker, config_file=config_file, hooks=hooks,
                                       task_status=task_status)
                nursery.cancel_scope.cancel()

            handle: RouterHandle = await nursery.start(serve_then_stop)
            # This process is the router's: what start-up built is frozen out of the
            # collector's walks, and the collector, paused by the CLI since its first
            # import, runs again (core.heap); a reload refreezes through hooks.applied.
            log.debug("heap settled: %d objects frozen", settle())
            drained = False
            async for signum in signals:
                if signum == signal.SIGHUP:
                    if not drained:
                        log.info("received SIGHUP: reloading %s", config_file)
                        nursery.start_soon(_reload_on_signal, handle)
                    continue
                if drained:
                    log.warning("second signal: stopping now")
                    handle.abort()
                    nursery.cancel_scope.cancel()
                    return
                log.info("received %s: draining (send again to stop at once)",
                         signal.Signals(signum).name)
                handle.shutdown()
                drained = True


def _resettle() -> None:
    log.debug("heap resettled after a config change: %d objects frozen", resettle())


def run_router(config: Config, config_file: str, workers: int,
               adjust: Callable[[Config], Config], worker_options: Sequence[str]) -> int:
    """``trio-continuum run`` once the config is loaded: serve it in this process, or, when
    ``workers`` > 1 and this is not a worker already, be the parent of that many workers
    (each a ``run`` of ``config_file`` with ``worker_options``). ``adjust`` is applied to
    every config a reload reads (the command line's overrides). Returns the exit code."""
    configure_logging(config.logging)
    worker = WorkerEnvironment.from_environ()
    try:
        if worker is None and workers > 1:
            gc.enable()  # the parent runs for as long as its workers: not a start-up
            return run_workers(config_file, workers, config.server.socket_mode,
                               config.server.bind_address, worker_options)
        hooks = ReloadHooks(adjust=adjust, logging=configure_logging, applied=_resettle)
        trio.run(_run, config, worker, config_file, hooks)
    except BaseException as exc:
        leaf = _sole_leaf(exc)
        if isinstance(leaf, ConfigError):  # e.g. a server.tls file that does not load
            print(f"trio-continuum: invalid config: {leaf}", file=sys.stderr)
            return 2
        if isinstance(leaf, OSError):  # e.g. the port is taken: say so, no traceback
            print(f"trio-continuum: {leaf.strerror or leaf}", file=sys.stderr)
            return 1
        if isinstance(leaf, KeyboardInterrupt):
            return 130
        raise
    return 0


def _sole_leaf(exc: BaseException) -> BaseException:
    """Unwrap nursery exception groups that hold exactly one exception."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
