"""The ``trio-continuum`` command: run, check, generate-config, admin, mock (every subcommand
and its options; the admin client is :mod:`continuum.admin_cli`, the mock upstream itself
:mod:`continuum.testing`, imported only by ``mock``)."""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, get_args

import msgspec

from . import __version__
from .admin_cli import add_admin_arguments, cmd_admin
from .config import (
    DURATION_HELP,
    Config,
    ConfigError,
    LoggingConfig,
    MockConfig,
    MockFailure,
    config_search_path,
    config_warnings,
    dump_effective_config,
    generate_config,
    load_config,
    parse_bind_address,
    parse_duration,
)

if TYPE_CHECKING:
    from .testing import MockUpstream

    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


def _config_file(args: argparse.Namespace) -> str | None:
    """The config file named on the command line (as the argument or ``--config``), else
    the first of :func:`config_search_path` that exists; None (said on stderr) when there is
    none or both ways name one."""
    named: list[str] = [p for p in (args.config, args.config_option) if p is not None]
    if len(named) == 2:
        print("trio-continuum: name the config once: as the argument or with --config",
              file=sys.stderr)
        return None
    if named:
        return named[0]
    candidates = config_search_path()
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    print("trio-continuum: no config file named and none found; looked for "
          + ", ".join(map(str, candidates))
          + " (name one: trio-continuum run CONFIG; a sample: trio-continuum generate-config)",
          file=sys.stderr)
    return None


def _load(args: argparse.Namespace) -> Config | None:
    """The config the command line names (or discovery finds), loaded; None (said on
    stderr) when there is none or it is invalid. ``args.config`` becomes its path."""
    path = _config_file(args)
    if path is None:
        return None
    args.config = path
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


def _literal_values(struct: type[msgspec.Struct], name: str) -> tuple[str, ...]:
    """The values a Literal field of the schema accepts, in the schema's order (read from
    it, not repeated here)."""
    field = next(f for f in msgspec.structs.fields(struct) if f.name == name)
    return tuple(str(v) for v in get_args(field.type))


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


def cmd_run(args: argparse.Namespace) -> int:
    # Until the router's loop takes SIGHUP (a reload), one must not end the process.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Start-up allocates ~40,000 objects that live as long as the router: the collector
    # would only walk them, again and again, while modules load. It is paused until the
    # router serves (core.heap.settle freezes them and starts it again).
    collecting = gc.isenabled()
    gc.disable()
    try:
        config = _load(args)
        if config is None:
            return 2
        try:
            config = _with_overrides(config, args)
        except ValueError as exc:
            print(f"trio-continuum: --bind: {exc}", file=sys.stderr)
            return 2
        from .runner import run_router  # the router's graph: only this command needs it

        # Workers get the addresses from us; the log level on their command line.
        options = ("--log-level", args.log_level) if args.log_level else ()
        return run_router(config, args.config, config.server.workers or os.cpu_count() or 1,
                          lambda fresh: _with_overrides(fresh, args), options)
    finally:
        if collecting:
            gc.enable()


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 2
    sys.stdout.write(dump_effective_config(config, args.format))
    _print_warnings(config)
    print(f"# {args.config}: OK ({len(config.backends)} backend(s))", file=sys.stderr)
    return 0


def cmd_generate_config(args: argparse.Namespace) -> int:
    sys.stdout.write(generate_config())
    return 0


def cmd_mock(args: argparse.Namespace) -> int:
    return run_mock_from_args(args)


# -- the mock upstream's options (the mock itself lives in continuum.testing) -------------------


def parse_mock_failure(spec: str) -> MockFailure:
    """``KIND[:STATUS][@RATE]`` → :class:`MockFailure` (argparse ``type=``).

    ``status:503@0.2`` = a 503 on 20% of requests; ``reset`` = every request is reset.
    """
    from .testing._failures import parse_fail_spec

    try:
        kind, status, rate = parse_fail_spec(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{spec!r}: {exc}") from None
    kinds = _literal_values(MockFailure, "kind")
    if kind not in kinds:
        raise argparse.ArgumentTypeError(
            f"{spec!r}: kind {kind!r} cannot be configured (only through "
            f"MockUpstream.fail_next); use one of {', '.join(kinds)}"
        )
    return msgspec.convert({"kind": kind, "status": status, "rate": rate}, MockFailure)


def _model_names(text: str) -> tuple[str, ...]:
    models = tuple(m.strip() for m in text.split(",") if m.strip())
    if not models:
        raise argparse.ArgumentTypeError("--models needs at least one model name")
    return models


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _duration(text: str) -> float:
    """``--latency``: seconds (``0.05``) or a duration as config files spell it (``50ms``)."""
    try:
        value: object = float(text)
    except ValueError:
        value = text
    try:
        return parse_duration(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {DURATION_HELP}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def add_mock_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``trio-continuum mock``."""
    parser.add_argument(
        "--bind", default="127.0.0.1:9000", metavar="HOST:PORT",
        help="address to listen on (default: %(default)s; port 0 picks a free one)",
    )
    parser.add_argument(
        "--models", type=_model_names, default=("mock-model",), metavar="A,B,...",
        help="comma-separated models to serve (default: mock-model)",
    )
    parser.add_argument(
        "--latency", type=_duration, default=0.0, metavar="DURATION",
        help="delay before each response head: seconds or a duration such as 50ms, 1.5s "
        "(default: 0)",
    )
    parser.add_argument(
        "--tokens-per-second", type=_non_negative, default=0.0, metavar="TPS",
        help="stream pacing, one SSE content chunk per token; 0 = unpaced (default)",
    )
    parser.add_argument(
        "--stream-chunks", type=_positive_int, default=8, metavar="N",
        help="content chunks per streamed answer (default: %(default)s)",
    )
    parser.add_argument(
        "--fail", type=parse_mock_failure, action="append", default=None,
        metavar="KIND[:STATUS][@RATE]",
        help="inject a failure (repeatable); KIND is one of "
        f"{', '.join(_literal_values(MockFailure, 'kind'))}"
        "; STATUS (for status, default 500) and RATE (0..1, default 1) are optional; "
        "e.g. status:503@0.2, reset@0.05",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed for the failure rates (reproducible runs)"
    )
    parser.add_argument("--name", default="mock", help="owned_by in /v1/models (default: mock)")
    parser.add_argument(
        "--api", choices=_literal_values(MockConfig, "api"), default="openai",
        help="the API to speak: openai, anthropic (/v1/messages) or gemini "
        "(/v1beta/models/M:generateContent) (default: %(default)s)",
    )


def mock_config_from_args(args: argparse.Namespace) -> MockConfig:
    return MockConfig(
        api=getattr(args, "api", "openai"),
        latency=args.latency,
        tokens_per_second=args.tokens_per_second,
        stream_chunks=args.stream_chunks,
        failures=tuple(args.fail or ()),
    )


def run_mock_from_args(args: argparse.Namespace) -> int:
    """Run ``trio-continuum mock`` until Ctrl-C; print the address once listening."""
    import trio  # like the mock itself, only for this command (see cmd_run)

    from .testing import MockUpstream

    upstream = MockUpstream(
        mock_config_from_args(args),
        args.models,
        name=getattr(args, "name", "mock"),
        seed=getattr(args, "seed", None),
    )
    try:
        trio.run(_run_mock, upstream, args.bind)
    except KeyboardInterrupt:
        return 0
    except BaseExceptionGroup as group:
        _, rest = group.split(KeyboardInterrupt)
        if rest is not None:
            raise
        return 0
    except OSError as exc:
        print(f"trio-continuum mock: {exc}", file=sys.stderr)
        return 1
    return 0


async def _run_mock(upstream: MockUpstream, bind: str) -> None:
    from .testing import open_mock_server

    server = await open_mock_server(upstream, bind)
    print(
        f"mock upstream listening on http://{server.addresses[0]} "
        f"(api: {upstream.api}, models: {', '.join(upstream.models)})",
        flush=True,
    )
    await server.run()


def mock_main(argv: Sequence[str] | None = None) -> int:
    """``python -m continuum.mock``: the same as ``trio-continuum mock``."""
    parser = argparse.ArgumentParser(
        prog="trio-continuum mock",
        description="A mock LLM upstream speaking the OpenAI, Anthropic or Gemini API.",
    )
    add_mock_arguments(parser)
    return run_mock_from_args(parser.parse_args(argv))


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?",
                        help="the config file, YAML or TOML (.toml), e.g. configs/demo.yaml; "
                        "without it, the first config.yaml, config.yml or config.toml in "
                        "the working directory, ~/.config/continuum-router/ or "
                        "/etc/continuum-router/")
    parser.add_argument("--config", dest="config_option", metavar="CONFIG",
                        help="the same as the argument")


def _run_command(sub: Subcommands) -> None:
    run = sub.add_parser("run", help="serve with a config file",
                         description="Run the router until SIGINT/SIGTERM (graceful drain).")
    _config_arguments(run)
    run.add_argument("--bind", action="append", metavar="ADDR",
                     help="listen here instead of server.bind_address: 'host:port', "
                     "'[::1]:port' or 'unix:/path'; repeat it or give a comma-separated list")
    levels = _literal_values(LoggingConfig, "level")
    run.add_argument("--log-level", choices=levels, metavar="LEVEL",
                     help="instead of logging.level: " + ", ".join(levels))
    run.set_defaults(func=cmd_run)


def _check_command(sub: Subcommands) -> None:
    check = sub.add_parser("check", help="validate a config and print it (secrets masked)",
                           description="Validate CONFIG; print the effective config with "
                           "secrets masked; exit non-zero if it is invalid.")
    _config_arguments(check)
    check.add_argument("--format", choices=("yaml", "toml"), default="yaml",
                       help="print the effective config as YAML (default) or TOML")
    check.set_defaults(func=cmd_check)


def _generate_config_command(sub: Subcommands) -> None:
    gen = sub.add_parser("generate-config", help="print a complete, commented config",
                         description="Print a complete config with every key, its default "
                         "and what it means.")
    gen.set_defaults(func=cmd_generate_config)


def _admin_command(sub: Subcommands) -> None:
    admin = sub.add_parser("admin", help="talk to a running router's admin API",
                           description="Read and change a running router through its admin "
                           "API (see docs/admin-api.md).")
    add_admin_arguments(admin)
    admin.set_defaults(func=cmd_admin)


def _mock_command(sub: Subcommands) -> None:
    mock = sub.add_parser("mock", help="run the mock upstream (OpenAI, Anthropic or Gemini API)",
                          description="Run the mock upstream (for demos, tests, benchmarks).")
    add_mock_arguments(mock)
    mock.set_defaults(func=cmd_mock)


#: Each subcommand's parser, in the order ``--help`` lists them.
_COMMANDS: Final[dict[str, Callable[[Subcommands], None]]] = {
    "run": _run_command,
    "check": _check_command,
    "generate-config": _generate_config_command,
    "admin": _admin_command,
    "mock": _mock_command,
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with ``command`` (one of :data:`_COMMANDS`), only that
    subcommand's: argparse's parsers cost ~0.3 ms each to make (the admin client's and
    the mock's many options most), which the router's start-up need not pay for the
    commands it does not run."""
    parser = argparse.ArgumentParser(
        prog="trio-continuum",
        description="A high-performance LLM API router: one OpenAI-compatible endpoint in "
        "front of many backends.",
        epilog="Without a command, the router runs: 'trio-continuum --config FILE' is "
        "'trio-continuum run FILE', and 'trio-continuum --generate-config' is "
        "'trio-continuum generate-config'.",
    )
    parser.add_argument("--version", action="version", version=f"trio-continuum {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, add in _COMMANDS.items():
        if command is None or name == command:
            add(sub)
    return parser


#: The reference router's spellings, which have no subcommand: ``--generate-config`` prints
#: the sample config; anything else that starts with an option (``--config FILE``, ``--bind``)
#: or nothing at all runs the router.
_TOP_LEVEL_ONLY = frozenset({"-h", "--help", "--version"})


def _with_command(argv: Sequence[str]) -> list[str]:
    """``argv`` with the subcommand the reference router's command lines imply."""
    args = list(argv)
    if args[:1] == ["--generate-config"]:
        return ["generate-config", *args[1:]]
    if not args or (args[0].startswith("-") and args[0] not in _TOP_LEVEL_ONLY):
        return ["run", *args]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    words = _with_command(sys.argv[1:] if argv is None else argv)
    args = build_parser(words[0] if words[0] in _COMMANDS else None).parse_args(words)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
