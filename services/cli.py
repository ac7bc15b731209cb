"""The ``boilerhouse`` command: ``up`` (whole stack), ``api``, ``aggregator`` and the debugging tools."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from services.aggregator import events_cli, placement, replay_cli
from services.aggregator.settings import AggregatorSettings, SettingsError
from services.api.settings import ApiSettings
from services.httpserver import MAX_HEAD_BYTES, connection_limits, guarded_protocol

logger = logging.getLogger("boilerhouse")


class CliError(Exception):
    """A problem the user can fix; printed without a traceback, exit status 2."""


class _Server(uvicorn.Server):
    """A uvicorn server whose signals are handled by ``serve_all`` (several servers, one loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _uvicorn(
    app: Any,
    host: str,
    port: int,
    *,
    read_timeout_s: float = ApiSettings.http_read_timeout_s,
    max_connections: int = ApiSettings.http_max_connections,
    share: int = 1,
) -> _Server:
    # uvicorn's h11 protocol with a timeout on reading each request and a cap on open connections, both
    # kept below the open-files limit with the listen backlog (services/httpserver.py says why uvicorn's
    # own settings give neither). ``share``: servers in this process, splitting its open files.
    limits = connection_limits(max_connections, share)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(read_timeout_s, limits.max_connections),
        backlog=limits.backlog,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        log_level="warning",
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return _Server(config)


async def serve_all(servers: list[_Server]) -> None:
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for s in servers:
            s.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    stop()  # one server ended (error or signal): stop the others
    await asyncio.gather(*tasks, return_exceptions=True)
    for t in done:
        if t.exception():
            raise t.exception()  # type: ignore[misc]
    if any(not s.started for s in servers):
        raise CliError("a server failed to start (is the port in use?)")


def _write_pidfile(path: str | None) -> None:
    if path:
        Path(path).write_text(f"{os.getpid()}\n")


# ---- subcommands ---------------------------------------------------------------------------------


def cmd_aggregator(args: argparse.Namespace) -> int:
    from services.aggregator.app import create_app  # noqa: PLC0415

    settings = AggregatorSettings.from_env().with_(
        redis_url=args.redis_url,
        host=args.host,
        port=args.port,
        shard=args.shard,
        shards=args.shards,
        partitions=args.partitions,
    )
    _write_pidfile(args.pidfile)
    if (
        args.rebuild
    ):  # fold the retained stream into fresh checkpoints (progress bar); the consumer restores them
        from services.aggregator.rebuild import rebuild_offline  # noqa: PLC0415

        rebuild_offline(settings)
    app = create_app(settings, rebuild=False)
    print(f"aggregator: metrics at http://{settings.host}:{settings.port}{settings.metrics_path}", flush=True)
    asyncio.run(serve_all([_uvicorn(app, settings.host, settings.port)]))
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    from services.api.app import create_app  # noqa: PLC0415

    settings = ApiSettings.from_env().with_(
        redis_url=args.redis_url,
        host=args.host,
        port=args.port,
        workloads_dir=args.workloads,
        data_dir=args.data_dir,
    )
    _write_pidfile(args.pidfile)
    app = _build_api(create_app, settings, args.demo)
    print(
        f"api: http://{settings.host}:{settings.port}/api/v1" + (" (demo traffic on)" if args.demo else ""),
        flush=True,
    )
    server = _uvicorn(
        app,
        settings.host,
        settings.port,
        read_timeout_s=settings.http_read_timeout_s,
        max_connections=settings.http_max_connections,
    )
    asyncio.run(serve_all([server]))
    return 0


def _build_api(create_app: Any, settings: ApiSettings, demo: bool) -> Any:
    from services.api.runtimes import UnknownRuntime  # noqa: PLC0415
    from services.api.workloads import WorkloadError  # noqa: PLC0415

    try:
        return create_app(settings, demo=demo)
    except (WorkloadError, UnknownRuntime) as exc:
        raise CliError(str(exc)) from None


def cmd_up(args: argparse.Namespace) -> int:
    from services.aggregator.app import create_app as create_aggregator  # noqa: PLC0415
    from services.api.app import create_app as create_api  # noqa: PLC0415
    from services.embedded import PROTO_MAX_BULK_LEN, EmbeddedRedis, EmbeddedRedisError  # noqa: PLC0415

    redis_url = args.redis_url or os.environ.get("BOILERHOUSE_REDIS_URL")
    embedded: EmbeddedRedis | None = None
    if not redis_url:
        state_dir = (Path(args.data_dir or ".boilerhouse") / "redis").resolve()  # redis-server chdirs
        # die_with_parent: `up` killed outright (SIGKILL, OOM) still stops its Redis, with its AOF.
        try:
            embedded = EmbeddedRedis(
                workdir=state_dir,
                appendonly=True,
                die_with_parent=True,
                extra_args=("--proto-max-bulk-len", PROTO_MAX_BULK_LEN),
            ).start()
        except EmbeddedRedisError as exc:
            raise CliError(f"cannot start the embedded Redis: {exc}") from None
        redis_url = embedded.url
    try:
        agg_settings = AggregatorSettings.from_env().with_(
            redis_url=redis_url, host=args.host, port=args.metrics_port
        )
        api_settings = ApiSettings.from_env().with_(
            redis_url=redis_url,
            host=args.host,
            port=args.api_port,
            workloads_dir=args.workloads,
            data_dir=args.data_dir,
        )
        _write_pidfile(args.pidfile)
        api_app = _build_api(create_api, api_settings, args.demo)
        servers = [
            _uvicorn(
                create_aggregator(agg_settings),
                agg_settings.host,
                agg_settings.port,
                share=2,
            ),
            _uvicorn(
                api_app,
                api_settings.host,
                api_settings.port,
                read_timeout_s=api_settings.http_read_timeout_s,
                max_connections=api_settings.http_max_connections,
                share=2,  # two servers, one process
            ),
        ]
        bus = f"{redis_url} ({embedded.kind}, embedded)" if embedded else redis_url
        print(
            "boilerhouse is up\n"
            f"  api:        http://{api_settings.host}:{api_settings.port}/api/v1\n"
            f"  metrics:    http://{agg_settings.host}:{agg_settings.port}{agg_settings.metrics_path}\n"
            + (
                f"  status:     http://{agg_settings.host}:{agg_settings.port}/  (the aggregator's landing page)\n"
                if agg_settings.metrics_path != "/"
                else ""
            )
            + f"  event bus:  {bus}\n"
            + (
                "  demo:       pools demo-* with generated traffic; every metric moves within a minute\n"
                if args.demo
                else ""
            )
            + "Press Ctrl-C to stop.",
            flush=True,
        )
        asyncio.run(serve_all(servers))
    finally:
        if embedded:
            embedded.stop()
    return 0


# ---- parser --------------------------------------------------------------------------------------


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{port} is not in 1..65535")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="boilerhouse", description="Boilerhouse with Prometheus metrics from lifecycle events."
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("BOILERHOUSE_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--redis-url", help="event bus (default: $BOILERHOUSE_REDIS_URL)")
        p.add_argument("--host", help="bind address (default 127.0.0.1)")
        p.add_argument("--pidfile", help="write the process id here")

    up = sub.add_parser("up", help="run the whole stack; starts an embedded Redis unless one is given")
    common(up)
    up.add_argument("--api-port", type=_port, help="API port (default 8080)")
    up.add_argument("--metrics-port", type=_port, help="metrics port (default 9464)")
    up.add_argument("--workloads", help="directory of workload YAML files")
    up.add_argument("--data-dir", help="where containers and the embedded Redis keep data (.boilerhouse)")
    up.add_argument("--demo", action="store_true", help="drive realistic traffic so every metric moves")
    up.set_defaults(func=cmd_up)

    api = sub.add_parser("api", help="run the API server (publishes events)")
    common(api)
    api.add_argument("--port", type=_port, help="port (default 8080, $BOILERHOUSE_API_PORT)")
    api.add_argument("--workloads", help="directory of workload YAML files")
    api.add_argument("--data-dir", help="where containers keep data")
    api.add_argument("--demo", action="store_true", help="create demo pools and drive traffic through them")
    api.set_defaults(func=cmd_api)

    agg = sub.add_parser("aggregator", help="run the aggregator (consumes events, serves /metrics)")
    common(agg)
    agg.add_argument("--port", type=_port, help="metrics port (default 9464, $BOILERHOUSE_METRICS_PORT)")
    agg.add_argument("--partitions", type=int, help="partition streams in use (default 1)")
    agg.add_argument("--shard", type=int, help="this aggregator's shard index (default 0)")
    agg.add_argument("--shards", type=int, help="number of aggregator shards (default 1)")
    agg.add_argument(
        "--rebuild",
        action="store_true",
        help="ignore the checkpoint and re-fold the retained stream from its start",
    )
    agg.set_defaults(func=cmd_aggregator)

    events_cli.register(sub)
    replay_cli.register(sub)
    placement.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":  # the demo drives the API through httpx: one line per request is noise
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except (CliError, SettingsError) as exc:
        print(f"boilerhouse: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
