"""The ``trio-continuum`` command: run, check, generate-config, mock."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

import msgspec
import trio

from . import __version__
from .actors.supervisor import RouterHandle, serve, serve_worker
from .actors.workers import WorkerEnvironment, run_workers
from .config import (
    Config,
    ConfigError,
    LoggingConfig,
    config_warnings,
    dump_effective_config,
    generate_config,
    load_config,
    parse_bind_address,
)
from .observability.logs import configure_logging

log = logging.getLogger("continuum")


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"trio-continuum: invalid config: {exc}", file=sys.stderr)
        return None


def _bind_addresses(values: Sequence[str]) -> tuple[str, ...]:
    """``--bind`` values (repeatable, each possibly a comma list), checked like
    ``server.bind_address``; ValueError says what is wrong."""
    addresses = [a.strip() for value in values for a in value.split(",") if a.strip()]
    if not addresses:
        raise ValueError("expected at least one address")
    seen: set[str] = set()
    for address in addresses:
        try:
            parsed = str(parse_bind_address(address))
        except ValueError as exc:
            raise ValueError(f"{address!r}: {exc}") from None
        if parsed in seen:
            raise ValueError(f"{address!r} is given twice")
        seen.add(parsed)
    return tuple(addresses)


def _log_levels() -> tuple[str, ...]:
    """The values ``logging.level`` accepts (read from the schema, not repeated here)."""
    info = msgspec.inspect.type_info(LoggingConfig)
    assert isinstance(info, msgspec.inspect.StructType)
    level = next(f.type for f in info.fields if f.name == "level")
    assert isinstance(level, msgspec.inspect.LiteralType)
    return tuple(str(v) for v in level.values)


def _with_overrides(config: Config, args: argparse.Namespace) -> Config:
    """``run --bind`` and ``--log-level`` win over the file."""
    if args.bind:
        server = msgspec.structs.replace(config.server, bind_address=_bind_addresses(args.bind))
        config = msgspec.structs.replace(config, server=server)
    if args.log_level:
        logging_cfg = msgspec.structs.replace(config.logging, level=args.log_level)
        config = msgspec.structs.replace(config, logging=logging_cfg)
    return config


def _print_warnings(config: Config) -> None:
    for warning in config_warnings(config):
        print(f"trio-continuum: warning: {config.source}: {warning}", file=sys.stderr)


async def _run(config: Config, worker: WorkerEnvironment | None = None) -> None:
    """Serve; the first SIGINT/SIGTERM drains gracefully, a second one stops at once."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def serve_then_stop(
                task_status: trio.TaskStatus[RouterHandle] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                if worker is None:
                    await serve(config, task_status=task_status)
                else:
                    await serve_worker(config, worker, task_status=task_status)
                nursery.cancel_scope.cancel()

            handle: RouterHandle = await nursery.start(serve_then_stop)
            drained = False
            async for signum in signals:
                if drained:
                    log.warning("second signal: stopping now")
                    handle.abort()
                    nursery.cancel_scope.cancel()
                    return
                log.info("received %s: draining (send again to stop at once)",
                         signal.Signals(signum).name)
                handle.shutdown()
                drained = True


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    try:
        config = _with_overrides(config, args)
    except ValueError as exc:
        print(f"trio-continuum: --bind: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.logging)
    worker = WorkerEnvironment.from_environ()
    count = config.server.workers or os.cpu_count() or 1
    try:
        if worker is None and count > 1:
            # Workers get the addresses from us; the log level on their command line.
            options = ("--log-level", args.log_level) if args.log_level else ()
            return run_workers(args.config, count, config.server.socket_mode,
                               config.server.bind_address, options)
        trio.run(_run, config, worker)
    except BaseException as exc:
        leaf = _sole_leaf(exc)
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


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    sys.stdout.write(dump_effective_config(config))
    _print_warnings(config)
    print(f"# {args.config}: OK ({len(config.backends)} backend(s))", file=sys.stderr)
    return 0


def cmd_generate_config(args: argparse.Namespace) -> int:
    sys.stdout.write(generate_config())
    return 0


def cmd_mock(args: argparse.Namespace) -> int:
    from .testing._upstream import run_mock_from_args

    return run_mock_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-continuum",
        description="A high-performance LLM API router: one OpenAI-compatible endpoint in "
        "front of many backends.",
    )
    parser.add_argument("--version", action="version", version=f"trio-continuum {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="serve with a config file",
                         description="Run the router until SIGINT/SIGTERM (graceful drain).")
    run.add_argument("config", help="path to the YAML config, e.g. configs/demo.yaml")
    run.add_argument("--bind", action="append", metavar="ADDR",
                     help="listen here instead of server.bind_address: 'host:port', "
                     "'[::1]:port' or 'unix:/path'; repeat it or give a comma-separated list")
    run.add_argument("--log-level", choices=_log_levels(), metavar="LEVEL",
                     help="instead of logging.level: " + ", ".join(_log_levels()))
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="validate a config and print it (secrets masked)",
                           description="Validate CONFIG; print the effective config with "
                           "secrets masked; exit non-zero if it is invalid.")
    check.add_argument("config")
    check.set_defaults(func=cmd_check)
    gen = sub.add_parser("generate-config", help="print a complete, commented config",
                         description="Print a complete config with every key, its default "
                         "and what it means.")
    gen.set_defaults(func=cmd_generate_config)
    mock = sub.add_parser("mock", help="run the mock upstream (OpenAI, Anthropic or Gemini API)",
                          description="Run the mock upstream (for demos, tests, benchmarks).")
    from .testing._upstream import add_mock_arguments

    add_mock_arguments(mock)
    mock.set_defaults(func=cmd_mock)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
