"""The `tidegate` command: serve, migrate, tenant and device admin, replay.

Each command prints one JSON object on stdout; `serve` and `worker` log JSON lines on stderr.
Exit status (`EXIT_HELP`, also shown by `tidegate --help`): 0 done, 1 refused or failed
(`{"error": ...}`), 2 bad arguments or configuration (message on stderr), 3 `serve`/`worker`
could not start (one `start_failed` log line naming what failed and where). The device
commands run the same operations as `POST /api/v1/batch/devices` (`store.devices`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import re
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import asyncpg

from tidegate import __version__, broker, logs, owner, startup
from tidegate.config import INFLUX_API_CHOICES, MODES, Config, ConfigError
from tidegate.ids import check_device, check_id, check_tenant, check_token
from tidegate.setting import (
    declared,
    parse_log_level,
    parse_port,
    positive_float,
    positive_int,
    readable_file,
    shown,
)
from tidegate.store import devices, open_registry, registry

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_HELP = f"""exit status:
  {EXIT_OK}  done
  {EXIT_FAILED}  refused or failed ({{"error": ...}} on stdout)
  {EXIT_USAGE}  bad arguments or configuration (stderr names the flag, variable or file)
  {startup.EXIT_START_FAILED}  serve or worker could not start: one "start_failed" log line
     names what failed and where (with its traceback at --log-level debug)"""

Command = Callable[[Config, argparse.Namespace], Coroutine[Any, Any, dict[str, object]]]


class CommandFailed(Exception):
    """A command that ran but could not do what was asked; exit 1 with `{"error", **details}`."""

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.details = details


def _arg(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from a config parser, so arguments and variables share their rules."""

    def convert(value: str) -> T:
        try:
            return parse(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


_tenant_arg = _arg(check_tenant)
_site_arg = _arg(functools.partial(check_id, "site id"))
_device_arg = _arg(check_device)
# Revoking takes any id, so a device provisioned before the `/` rule can still be revoked.
_any_device_arg = _arg(functools.partial(check_id, "device id"))


def _secret_arg(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def _url_arg(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{value!r} must start with http:// or https://")
    return value.rstrip("/")


@asynccontextmanager
async def _opened(cfg: Config) -> AsyncIterator[registry.Registry]:
    reg = await open_registry(cfg)
    try:
        yield reg
    finally:
        await reg.close()


async def _migrate(cfg: Config, args: argparse.Namespace) -> dict[str, object]:
    async with _opened(cfg) as reg:
        await reg.migrate()
        return {"migrated": True, "backend": reg.backend}


async def _tenant_add(cfg: Config, args: argparse.Namespace) -> dict[str, object]:
    async with _opened(cfg) as reg:
        api_key = await reg.add_tenant(args.tenant, args.api_key)
    return {"tenant_id": args.tenant, "api_key": api_key}


async def _device_op(cfg: Config, tenant: str, operation: dict[str, object]) -> dict[str, object]:
    """Run one device operation; its data, or CommandFailed with its error."""
    async with _opened(cfg) as reg:
        (outcome,) = await devices.apply(reg, tenant, [operation])
    if not outcome.ok or outcome.data is None:
        raise CommandFailed(outcome.error or f"status {outcome.status_code}")
    return {"tenant_id": tenant, **outcome.data}


def _given(**fields: object) -> dict[str, object]:
    return {k: v for k, v in fields.items() if v is not None}


async def _device_add(cfg: Config, args: argparse.Namespace) -> dict[str, object]:
    op = {"op": devices.CREATE, "device_id": args.device, "site_id": args.site}
    op.update(_given(rps=args.rps, burst=args.burst, provision_token=args.token))
    out = await _device_op(cfg, args.tenant, op)
    keep = ("tenant_id", "device_id", "site_id", "provision_token")
    return {k: out[k] for k in keep}


async def _device_update(cfg: Config, args: argparse.Namespace) -> dict[str, object]:
    op = {"op": devices.UPDATE, "device_id": args.device}
    op.update(_given(site_id=args.site, rps=args.rps, burst=args.burst))
    return await _device_op(cfg, args.tenant, op)


async def _device_rotate(cfg: Config, args: argparse.Namespace) -> dict[str, object]:
    op = {"op": devices.ROTATE_TOKEN, "device_id": args.device}
    op.update(_given(provision_token=args.token))
    return await _device_op(cfg, args.tenant, op)


async def _device_revoke(cfg: Config, args: argparse.Namespace) -> dict[str, object]:
    out = await _device_op(cfg, args.tenant, {"op": devices.REVOKE_OP, "device_id": args.device})
    if cfg.nats.broker_dir is not None:
        await asyncio.to_thread(
            broker.remove_devices, cfg.nats.broker_dir, args.tenant, [args.device]
        )
    return out


async def _device_mqtt_credentials(cfg: Config, args: argparse.Namespace) -> dict[str, object]:
    if cfg.nats.broker_dir is None:
        raise CommandFailed("NATS_BROKER_DIR is not set (the --dir of `tidegate nats setup`)")
    async with _opened(cfg) as reg:
        found = await reg.devices([(args.tenant, args.device)])
    if not any(d.active for d in found.values()):
        raise CommandFailed(f"no active device {args.device!r} in tenant {args.tenant!r}")
    creds = await asyncio.to_thread(
        broker.device_credentials, cfg.nats.broker_dir, args.tenant, args.device
    )
    return dict(creds)


async def _nats_setup(cfg: Config, args: argparse.Namespace) -> dict[str, object]:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CommandFailed("--tls-cert and --tls-key go together")
    at = broker.Listeners(
        args.host,
        args.port,
        args.mqtt_port,
        args.monitor_port,
        args.tls_cert,
        args.tls_key,
        args.tls_ca,
        args.monitor_host,
    )
    return broker.setup(args.dir, at)


async def _device_list(cfg: Config, args: argparse.Namespace) -> dict[str, object]:
    async with _opened(cfg) as reg:
        devices = await reg.list_devices(args.tenant)
    return {"tenant_id": args.tenant, "devices": devices}


async def _replay(cfg: Config, args: argparse.Namespace) -> dict[str, object]:
    # Imported here: only replay needs httpx and the core.
    from tidegate.sink.replay import replay

    counts = await replay(
        cfg, args.influx, args.api or cfg.influx_api, dead_letters=args.dead_letters
    )
    if counts.get("files_failed"):
        raise CommandFailed("a file could not be sent; run replay again to resume", **counts)
    return dict(counts)


def _serve(cfg: Config, args: argparse.Namespace) -> int:
    # Imported here: only serve needs Starlette and uvicorn, and only NATS mode nats-py.
    from tidegate.http.app import serve

    if cfg.mode == "nats":
        from tidegate.nats.edge import open_publisher

        serve(cfg, open_publisher)
    else:
        serve(cfg)
    return EXIT_OK


def _worker(cfg: Config, args: argparse.Namespace) -> int:
    # Imported here: only the worker needs nats-py.
    from tidegate.nats.ops import serve

    serve(cfg)
    return EXIT_OK


class _Parser(argparse.ArgumentParser):
    """argparse, but an unknown flag is named even when a required argument is missing too
    (argparse reports the missing one: `tidegate --bogus` said "arguments are required")."""

    _given: list[str]

    # One signature for argparse's three overloads (it is called with and without a namespace).
    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        """Remember this parser's own arguments for `error`."""
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        """Exit 2 with the message; unknown flags first."""
        unknown = self._unknown_flags()
        if unknown and message.startswith("the following arguments are required"):
            message = f"unrecognized arguments: {' '.join(unknown)}"
        super().error(message)

    def _unknown_flags(self) -> list[str]:
        known = self._option_string_actions
        unknown = []
        for arg in getattr(self, "_given", []):
            if arg == "--":
                break
            flag = arg.split("=", 1)[0]
            if not flag.startswith("-") or flag == "-" or _NUMBER.match(flag):
                continue
            # argparse takes an unambiguous prefix of a long flag (--dead for --dead-letters).
            if flag not in known and not any(o.startswith(flag) for o in known if len(flag) > 2):
                unknown.append(arg)
        return unknown


_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = _Parser(
        prog="tidegate",
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="HTTP telemetry ingest gateway. Configuration comes from the environment "
        "(and --config FILE).",
    )
    parser.add_argument("--version", action="version", version=f"tidegate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Every command that reads the configuration takes the file.
    config_file = _Parser(add_help=False)
    config_file.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML file of settings, keyed by variable name (the environment overrides it)",
    )

    # serve and worker: their help lists every variable.
    long_running: dict[str, Any] = {
        "epilog": _variables_help(),
        "formatter_class": argparse.RawDescriptionHelpFormatter,
        "parents": [config_file],
    }
    serve = commands.add_parser(
        "serve",
        help="run the gateway (migrates first)",
        description="Run the gateway (migrates first). Flags override the environment, which "
        "overrides the --config file.",
        **long_running,
    )
    serve.add_argument("--host", type=_secret_arg, help="listen address (TIDEGATE_HOST)")
    serve.add_argument("--port", type=_arg(parse_port), help="listen port (TIDEGATE_PORT)")
    serve.add_argument(
        "--log-level",
        type=_arg(parse_log_level),
        help="debug|info|warning|error (TIDEGATE_LOG_LEVEL)",
    )
    serve.add_argument(
        "--data-dir", type=_secret_arg, metavar="DIR", help="data directory (TIDEGATE_DATA_DIR)"
    )
    serve.add_argument("--mode", choices=MODES, help="direct|nats (TIDEGATE_MODE)")
    serve.add_argument(
        "--ssl-certfile",
        type=_arg(readable_file),
        metavar="PEM",
        help="TLS certificate (chain) of the public listener (TIDEGATE_SSL_CERTFILE)",
    )
    serve.add_argument(
        "--ssl-keyfile",
        type=_arg(readable_file),
        metavar="PEM",
        help="its private key (TIDEGATE_SSL_KEYFILE)",
    )
    serve.set_defaults(process=_serve)
    commands.add_parser(
        "worker",
        help="NATS mode: consume TELEMETRY and write to InfluxDB (or LP files)",
        description="NATS mode: consume TELEMETRY and write to InfluxDB (or LP files). The "
        "environment overrides the --config file.",
        **long_running,
    ).set_defaults(process=_worker)
    commands.add_parser(
        "migrate", help="create or update the registry schema", parents=[config_file]
    ).set_defaults(run=_migrate)

    tenant = commands.add_parser("tenant", help="tenant admin").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    tenant_add = tenant.add_parser(
        "add", help="create a tenant and print its API key", parents=[config_file]
    )
    tenant_add.add_argument("--tenant", required=True, type=_tenant_arg)
    tenant_add.add_argument("--api-key", type=_secret_arg, help="default: a random 256-bit key")
    tenant_add.set_defaults(run=_tenant_add)

    device = commands.add_parser("device", help="device admin").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    device_add = device.add_parser(
        "add", help="register a device and print its token", parents=[config_file]
    )
    device_add.add_argument("--tenant", required=True, type=_tenant_arg)
    device_add.add_argument("--device", required=True, type=_device_arg)
    device_add.add_argument("--site", required=True, type=_site_arg)
    device_add.add_argument("--rps", type=_arg(positive_float), help="messages per second")
    device_add.add_argument("--burst", type=_arg(positive_int), help="bucket size")
    device_add.add_argument(
        "--token", type=_arg(check_token), help="default: a random 256-bit token"
    )
    device_add.set_defaults(run=_device_add)

    device_update = device.add_parser(
        "update", help="change a device's site or rate limit", parents=[config_file]
    )
    device_update.add_argument("--tenant", required=True, type=_tenant_arg)
    device_update.add_argument("--device", required=True, type=_any_device_arg)
    device_update.add_argument("--site", type=_site_arg)
    device_update.add_argument("--rps", type=_arg(positive_float), help="messages per second")
    device_update.add_argument("--burst", type=_arg(positive_int), help="bucket size")
    device_update.set_defaults(run=_device_update)

    device_rotate = device.add_parser(
        "rotate-token", help="give a device a new token", parents=[config_file]
    )
    device_rotate.add_argument("--tenant", required=True, type=_tenant_arg)
    device_rotate.add_argument("--device", required=True, type=_any_device_arg)
    device_rotate.add_argument("--token", type=_arg(check_token), help="default: a random token")
    device_rotate.set_defaults(run=_device_rotate)

    device_revoke = device.add_parser(
        "revoke", help="revoke a device's token", parents=[config_file]
    )
    device_revoke.add_argument("--tenant", required=True, type=_tenant_arg)
    device_revoke.add_argument("--device", required=True, type=_any_device_arg)
    device_revoke.set_defaults(run=_device_revoke)

    device_mqtt = device.add_parser(
        "mqtt-credentials",
        help="NATS mode: a new MQTT user for the device (NATS_BROKER_DIR)",
        parents=[config_file],
    )
    device_mqtt.add_argument("--tenant", required=True, type=_tenant_arg)
    device_mqtt.add_argument("--device", required=True, type=_device_arg)
    device_mqtt.set_defaults(run=_device_mqtt_credentials)

    device_list = device.add_parser(
        "list", help="list a tenant's devices (no tokens)", parents=[config_file]
    )
    device_list.add_argument("--tenant", required=True, type=_tenant_arg)
    device_list.set_defaults(run=_device_list)

    nats = commands.add_parser("nats", help="NATS mode admin").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    nats_setup = nats.add_parser(
        "setup",
        help="write a nats-server config with fresh secrets; print the services' env",
        parents=[config_file],
    )
    nats_setup.add_argument("--dir", required=True, type=Path, metavar="DIR")
    at = broker.Listeners()
    nats_setup.add_argument("--host", type=_secret_arg, default=at.host)
    nats_setup.add_argument("--port", type=_arg(parse_port), default=at.port)
    nats_setup.add_argument("--mqtt-port", type=_arg(parse_port), default=at.mqtt_port)
    nats_setup.add_argument("--monitor-port", type=_arg(parse_port), default=at.monitor_port)
    nats_setup.add_argument(
        "--monitor-host",
        type=_secret_arg,
        default=at.monitor_host,
        help=f"the monitoring listener's address, which has no auth (default {at.monitor_host})",
    )
    for flag, what in (("cert", "certificate"), ("key", "private key"), ("ca", "CA bundle")):
        nats_setup.add_argument(
            f"--tls-{flag}", type=Path, metavar="PEM", help=f"TLS on both listeners: {what}"
        )
    nats_setup.set_defaults(run=_nats_setup)

    replay = commands.add_parser(
        "replay", help="send embedded-sink LP files to an InfluxDB", parents=[config_file]
    )
    replay.add_argument("--influx", required=True, type=_url_arg, metavar="URL")
    replay.add_argument("--api", choices=INFLUX_API_CHOICES, help="default: INFLUX_API")
    replay.add_argument(
        "--dead-letters",
        action="store_true",
        help="send the dead-letter files instead (after fixing what refused them)",
    )
    replay.set_defaults(run=_replay)
    return parser


# `serve` flags and the variables they override.
_SERVE_FLAGS = {
    "host": "TIDEGATE_HOST",
    "port": "TIDEGATE_PORT",
    "log_level": "TIDEGATE_LOG_LEVEL",
    "data_dir": "TIDEGATE_DATA_DIR",
    "mode": "TIDEGATE_MODE",
    "ssl_certfile": "TIDEGATE_SSL_CERTFILE",
    "ssl_keyfile": "TIDEGATE_SSL_KEYFILE",
}


def _variables_help() -> str:
    rows = [(d.var, shown(d.default), d.doc) for d in declared(Config)]
    name_w = max(len(name) for name, _, _ in rows)
    default_w = max(len(default) for _, default, _ in rows)
    lines = [f"  {n:<{name_w}}  {d:<{default_w}}  {doc}" for n, d, doc in rows]
    return "environment variables (default, meaning):\n" + "\n".join(lines)


def _print(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {}
    if args.command == "serve":
        given = {var: getattr(args, flag) for flag, var in _SERVE_FLAGS.items()}
        overrides = {var: str(value) for var, value in given.items() if value is not None}
    try:
        cfg = Config.from_env(overrides=overrides, file=args.config)
    except ConfigError as exc:
        parser.exit(EXIT_USAGE, f"tidegate: configuration error: {exc}\n")
    logs.configure(cfg.log_level)
    if args.command in ("serve", "worker"):
        # Before anything opens the directory's files (the log, its live segment); the
        # descriptor stays open, so the lock is held until the process exits.
        try:
            owner.claim(cfg.data_dir, args.command)
        except owner.Locked as exc:
            sys.stderr.write(f"tidegate: {exc}\n")
            return EXIT_FAILED
        process: Callable[[Config, argparse.Namespace], int] = args.process
        try:
            return process(cfg, args)
        except startup.StartupFailed as exc:
            startup.report(exc)
            return startup.EXIT_START_FAILED
    run: Command = args.run
    try:
        result = asyncio.run(run(cfg, args))
    except CommandFailed as exc:
        _print({"error": str(exc), **exc.details})
        return EXIT_FAILED
    except (registry.RegistryError, broker.BrokerError) as exc:
        _print({"error": str(exc)})
        return EXIT_FAILED
    except (OSError, sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        if isinstance(exc, asyncpg.UndefinedTableError) or "no such table" in str(exc):
            _print({"error": f"the registry has no schema yet, run `tidegate migrate`: {exc}"})
        else:
            _print({"error": f"database: {exc}"})
        return EXIT_FAILED
    _print(result)
    return EXIT_OK
