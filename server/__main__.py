"""`genjobs-server` (and `python -m genjobs.server`): serve, or print a token."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import shlex
import signal
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

from genjobs.server.api.auth import load_secret, make_token
from genjobs.server.runtime import observability
from genjobs.server.runtime.app import App, run
from genjobs.server.runtime.config import Settings, add_flags


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genjobs-server",
        description="Run the genjobs gRPC service (default), or print an auth token.",
    )
    add_flags(parser)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the server (the default)")
    token = commands.add_parser("token", help="print a bearer token signed with the server's secret")
    token.add_argument("--user", required=True, help="the user id (the token's sub)")
    token.add_argument("--admin", action="store_true", help="may read every user's jobs")
    token.add_argument("--days", type=float, default=30, help="how long the token is valid")
    token.add_argument("--tier", default="", help='the claim "tier" ("premium" may submit PRIORITY_HIGH)')
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the genjobs-server console script."""
    args = _parser().parse_args(argv)
    settings = Settings.from_env().with_args(args)
    if args.command == "token":
        secret = load_secret(settings.auth_secret, settings.data_dir)
        print(make_token(secret, args.user, args.admin, int(args.days * 86400), args.tier))
        return 0
    observability.configure_logging(settings.log_level, settings.log_format, _secrets(settings))
    return run(_serve(settings))


def _secrets(settings: Settings) -> list[str]:
    """What no log line may show: the signing secrets and any password in a URL."""
    found = [load_secret(settings.auth_secret, settings.data_dir)]
    found.append(load_secret(settings.webhook_secret, settings.data_dir, "webhook_secret"))
    for url in (settings.mongodb_uri, settings.smtp_url):
        password = urlsplit(url).password if url else None
        found += [password, unquote(password)] if password else []
    return found


async def _serve(settings: Settings) -> int:
    app = App(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():  # the second signal: no more waiting
            logging.getLogger(__name__).warning("second signal: stopping now")
            app.hurry()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        port = await app.start()  # undoes itself when it fails
    except (Exception, SystemExit) as exc:
        print(_why(exc), file=sys.stderr, flush=True)
        return 1
    _quiet_garbage_collector()
    if settings.log_format == "json":  # production: no dev token on the console
        logging.getLogger(__name__).info("serving on %s:%d", settings.host, port)
    else:
        _print_banner(settings, port, app.http_port)
    # A stop signal, or a failure the server cannot serve past (its embedded
    # database cannot be restarted): then it exits 1, for its supervisor to restart it.
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(app.failed.wait())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for waiting in waits:
        waiting.cancel()
    logging.getLogger(__name__).info(
        "shutting down: the running job has %.0f s to finish", settings.shutdown_grace_seconds
    )
    await app.stop(grace=settings.shutdown_grace_seconds)
    if app.failed.is_set():
        print(f"genjobs: {app.failure}", file=sys.stderr, flush=True)
        return 1
    return 0


def _why(exc: BaseException) -> str:
    """One line saying why the server could not start (no traceback: the cause is not a bug)."""
    if isinstance(exc, SystemExit) and isinstance(exc.code, str):
        return exc.code  # a bad setting, already phrased for the operator
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"genjobs: cannot start: {detail}"


def _quiet_garbage_collector() -> None:
    """Fewer full collections: with thousands of streams open, each one walks
    hundreds of thousands of live objects and stalls every stream for up to
    100 ms (the worst WatchJob fan-out bursts). What start-up made is frozen
    out of collection; young objects are collected less often."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def _token_flag(settings: Settings, token: str) -> str:
    """What the banner's genjobs line needs to find its token: nothing with the
    default data dir (the CLI makes a token from the secret there by itself),
    else the data dir, or the token itself when the secret is configured."""
    if settings.auth_secret:
        return f" --token {token}"
    if settings.data_dir.resolve() != Settings().data_dir.resolve():
        return f" --data-dir {shlex.quote(str(settings.data_dir.resolve()))}"
    return ""


def _tool(name: str) -> str:
    """How to call a script installed beside this Python (e.g. .venv/bin/genjobs)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        return name
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _generator_text(settings: Settings) -> str:
    """Which generator writes the articles, and with what model or service."""
    if settings.generator == "openai":
        return f"openai, model {settings.openai_model} at {settings.openai_base_url} (GENJOBS_OPENAI_MODEL)"
    if settings.generator == "http":
        return f"http, at {settings.generator_url} (GENJOBS_GENERATOR_URL)"
    if settings.generator == "demo":
        return "demo, no model: made-up articles (GENJOBS_GENERATOR=openai or http for real ones)"
    return settings.generator


def _print_banner(settings: Settings, port: int, http_port: int = 0) -> None:
    secret = load_secret(settings.auth_secret, settings.data_dir)
    token = make_token(secret, "dev")
    target = f"{settings.host}:{port}"
    database = settings.mongodb_uri or f"embedded, in {settings.data_dir}"
    web = f"http://{settings.http_host or settings.host}:{http_port}"
    dashboard = (
        f"""  dashboard (signed in as 'dev'; the token stays in the URL fragment):
    {web}/#token={token}
  curl:
    curl -H "authorization: Bearer $GENJOBS_TOKEN" {web}/v1/jobs
"""
        if http_port
        else ""
    )
    print(
        f"""
genjobs is serving on {target}  (database: {database})
  generator: {_generator_text(settings)}

  token for user 'dev':
    export GENJOBS_TOKEN={token}
  grpcurl:
    {_tool("grpcurl")} -plaintext -H "authorization: Bearer $GENJOBS_TOKEN" \\
      -d '{{"mode":"MODE_TOPIC","params":{{"topic":"Green tea"}}}}' {target} genjobs.v1.JobService/SubmitJob
  genjobs:
    {_tool("genjobs")} --target {target}{_token_flag(settings, token)} submit --topic "Green tea" --watch
{dashboard}
Stop with Ctrl-C.
""",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
