"""Command line: ``lbproxy run | check | demo | --version``. The only module that exits the process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from lbproxy import __version__
from lbproxy.build import describe
from lbproxy.config.loader import load_config
from lbproxy.config.model import Config
from lbproxy.errors import ConfigError

log = logging.getLogger("lbproxy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lbproxy", description="An L4/L7 load balancer daemon.")
    parser.add_argument("--version", action="version", version=f"lbproxy {__version__} ({describe()})")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("-c", "--config", required=True, help="YAML config file")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument(
        "--workers",
        type=_workers_arg,
        help="worker processes sharing the listeners: a number or 'auto' (one per core); "
        "overrides 'workers' in the config (default 1: one process)",
    )
    run.add_argument(
        "--shared-socket",
        action="store_true",
        help="with workers: one listening socket shared by all workers, instead of one SO_REUSEPORT "
        "socket each (which spreads connections more evenly)",
    )
    # set by the supervisor when it starts a worker process; not for people
    run.add_argument("--worker-channel", type=int, help=argparse.SUPPRESS)
    run.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)

    check = sub.add_parser("check", help="validate a config file and exit")
    check.add_argument("-c", "--config", required=True, help="YAML config file")

    explain = sub.add_parser("explain", help="show which route a request takes, without contacting backends")
    explain.add_argument("-c", "--config", required=True, help="YAML config file")
    explain.add_argument("request", help="e.g. 'GET http://shop.example.com/api/payments?x=1'")
    explain.add_argument("-H", "--header", action="append", default=[], help="a request header, 'Name: value'")
    explain.add_argument("--listener", help="the http listener to use (default: by port, else the first)")

    demo = sub.add_parser("demo", help="start demo backends and a load balancer in front of them")
    demo.add_argument("--http-port", type=int, default=8080)
    demo.add_argument("--tcp-port", type=int, default=7000)
    demo.add_argument("--admin-port", type=int, default=9901)
    demo.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def summarize(config: Config) -> str:
    """The one-line summary ``check`` prints for a valid config."""
    backends = sum(len(p.backends) for p in config.pools.values())
    modes = ", ".join(f"{l.name} ({l.mode} {l.bind})" for l in config.listeners)
    return (
        f"{config.source}: OK: {len(config.listeners)} listeners [{modes}], "
        f"{len(config.pools)} pools, {backends} backends"
    )


def setup_logging(level: str, worker: int | None = None) -> None:
    tag = "" if worker is None else f"[worker {worker}] "
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s",
    )


def _workers_arg(text: str) -> int | str:
    from lbproxy.config.loader import parse_workers

    try:
        return parse_workers("auto" if text == "auto" else int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _load_or_report(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{path}: {len(exc.problems)} error(s); configuration refused", file=sys.stderr)
        return None


def _new_loop() -> asyncio.AbstractEventLoop:
    import uvloop

    return uvloop.new_event_loop()


def cmd_check(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return 1
    print(summarize(config))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return 1
    from lbproxy.explain import ExplainError, explain

    try:
        print(explain(config, args.request, args.header, args.listener), end="")
    except ExplainError as exc:
        print(f"lbproxy explain: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.worker_channel is not None:
        return _run_worker(args)
    setup_logging(args.log_level)
    config = _load_or_report(args.config)
    if config is None:
        return 1
    from lbproxy.runtime.supervisor import resolve_workers

    workers = resolve_workers(args.workers if args.workers is not None else config.workers)
    if workers > 1:
        return _run_supervisor(args, config, workers)
    from lbproxy.runtime.daemon import Daemon

    async def main() -> int:
        daemon = Daemon(config)
        try:
            await daemon.start()
        except OSError as exc:
            log.error("cannot start: %s", exc)
            return 1
        _install_signals(daemon)
        await daemon.run_until_stopped()
        return 0

    with asyncio.Runner(loop_factory=_new_loop) as runner:
        return runner.run(main())


def _run_supervisor(args: argparse.Namespace, config: Config, workers: int) -> int:
    from lbproxy.runtime.supervisor import Supervisor

    async def main() -> int:
        supervisor = Supervisor(
            config,
            workers,
            sharing="shared" if args.shared_socket else "reuseport",
            log_level=args.log_level,
            workers_from_cli=args.workers is not None,
        )
        loop = asyncio.get_running_loop()
        for sig, command in ((signal.SIGTERM, "stop"), (signal.SIGINT, "stop"), (signal.SIGHUP, "reload"),
                             (signal.SIGUSR1, "reopen")):  # fmt: skip
            loop.add_signal_handler(sig, supervisor.request, command)
        return await supervisor.run()

    with asyncio.Runner(loop_factory=_new_loop) as runner:
        return runner.run(main())


def _run_worker(args: argparse.Namespace) -> int:
    """A worker process (started by the supervisor): it stops on SIGTERM or when the supervisor
    goes away; Ctrl-C and SIGHUP reach the supervisor, which tells the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    setup_logging(args.log_level, worker=args.worker_index)
    import socket

    from lbproxy.runtime.worker import Worker, WorkerError

    async def main() -> int:
        worker = Worker(socket.socket(fileno=args.worker_channel), args.worker_index)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, worker.request_stop)
        loop.add_signal_handler(signal.SIGUSR1, worker.reopen_logs)
        try:
            await worker.start()
        except (WorkerError, OSError) as exc:
            log.error("cannot start: %s", exc)
            return 1
        return await worker.run()

    with asyncio.Runner(loop_factory=_new_loop) as runner:
        return runner.run(main())


def cmd_demo(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    from lbproxy.demo.run import run_demo

    async def main() -> int:
        try:
            daemon = await run_demo(args.http_port, args.tcp_port, args.admin_port)
        except OSError as exc:
            log.error("cannot start the demo: %s (try --http-port/--tcp-port/--admin-port)", exc)
            return 1
        _install_signals(daemon)
        await daemon.run_until_stopped()
        return 0

    with asyncio.Runner(loop_factory=_new_loop) as runner:
        return runner.run(main())


def _install_signals(daemon: object) -> None:
    from lbproxy.runtime.daemon import Daemon

    assert isinstance(daemon, Daemon)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_stop)
    loop.add_signal_handler(signal.SIGUSR1, daemon.reopen_logs)
    loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"run": cmd_run, "check": cmd_check, "demo": cmd_demo, "explain": cmd_explain}
    return handlers[args.command](args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
