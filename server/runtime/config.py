"""Settings from environment variables, each overridable by a genjobs-server flag."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """Everything the server reads from its environment."""

    port: int = 50051
    host: str = "127.0.0.1"
    data_dir: Path = Path(".genjobs")
    mongodb_uri: str = ""  # empty: start (or join) the embedded nx-27017
    db_name: str = "genjobs"
    auth_secret: str = ""  # empty: made once in the data dir
    generator: str = "demo"
    generator_url: str = ""
    lease_seconds: float = 10.0
    max_attempts: int = 3
    retention_days: float = 30.0
    # What retention does (storage/archive.py): "archive" moves finished jobs to
    # the archive collections (completed after retention_days, failed and
    # cancelled after archive_failed_days), which keep them archive_retention_days
    # (0: for ever); "delete" deletes completed jobs and keeps the others live.
    retention_mode: str = "archive"
    archive_failed_days: float = 90.0
    archive_retention_days: float = 0.0
    webhook_secret: str = ""
    log_level: str = "INFO"
    retry_base_seconds: float = 1.0
    heartbeat_seconds: float = 15.0
    poll_seconds: float = 0.5
    webhook_backoff_seconds: float = 1.0
    # Off: webhooks to loopback, private, link-local and metadata addresses are refused.
    webhook_allow_private: bool = False
    webhook_timeout_seconds: float = 5.0
    smtp_url: str = ""  # smtp://user:pass@host:port or smtps://...; empty: no email
    smtp_from: str = ""
    # Notifications: how long a claimed delivery attempt is held before another
    # server may make it (renewed while the attempt runs), one mail attempt's
    # time limit, and how many mails one owner may send an hour.
    notify_claim_seconds: float = 120.0
    smtp_timeout_seconds: float = 10.0
    mail_per_owner_per_hour: int = 100
    public_url: str = ""  # where people reach genjobs' HTTP face: links in mails
    # Generators (server/generators/): the http generator's time limit and
    # headers, the openai generator's endpoint, and every attempt's limits.
    generator_timeout_seconds: float = 600.0
    generator_headers: str = field(default="", repr=False)  # JSON object; may hold credentials
    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: str = field(default="", repr=False)  # empty: OPENAI_API_KEY
    openai_model: str = "gpt-4o-mini"
    openai_prices: str = ""  # JSON: {"<model>": {"input_per_mtok": USD, "output_per_mtok": USD}}
    # TOML naming the openai generator's providers, models, prices and fallbacks
    # (docs/generators.md); empty: the GENJOBS_OPENAI_* settings are its one provider.
    providers_file: str = ""
    # A provider's outages (issue #31): failures in a row that mark it down, how
    # often a down provider is probed, how long its waiting jobs wait at most.
    provider_failure_threshold: int = 3
    provider_probe_seconds: float = 10.0
    provider_max_outage_seconds: float = 6 * 3600.0
    prompts_file: str = ""  # empty: the built-in server/generators/prompts.toml
    attempt_timeout_seconds: float = 900.0
    stream_idle_seconds: float = 60.0
    progress_target: str = ""  # host:port generation services report to; empty: this server's
    http_port: str = "8080"  # 0: a free port; "off": no HTTP face
    http_host: str = ""  # empty: the same as host
    # The HTTP port's guards against abuse (server/api/http/guard.py): the largest
    # request head (request line and headers), how long a head may take to
    # arrive, how long a kept-alive connection may sit idle, and how many
    # connections may be open at once (event streams included).
    http_max_header_bytes: int = 32768
    http_header_timeout_seconds: float = 10.0
    http_body_timeout_seconds: float = 30.0
    http_idle_seconds: float = 5.0
    http_max_connections: int = 2000
    # The longest any database call may take when the RPC sets no shorter deadline;
    # a database that does not answer in time is UNAVAILABLE, not a stall.
    db_timeout_seconds: float = 5.0
    metrics_port: int = 0  # Prometheus /metrics on its own port; 0: not served there
    log_format: str = "text"  # or json: one object a line
    shutdown_grace_seconds: float = 20.0  # how long a stopping server lets the running job finish
    tls_cert_file: str = ""  # PEM certificate chain: serve TLS (gRPC, and the HTTP face)
    tls_key_file: str = ""
    tls_client_ca_file: str = ""  # PEM CA bundle: require client certificates (mutual TLS)
    # Pacing: how many jobs may run at once across the deployment, and the least
    # time between the end of one run and the start of the next (throttling generators).
    concurrency: int = 1
    job_gap_seconds: float = 0.0
    max_queued_per_owner: int = 1000  # more queued jobs than this per owner are refused
    # Abuse limits per owner (issue 26): schedules, the least time between two of a
    # schedule's ticks, templates and their size, and open watch streams (per process).
    max_schedules_per_owner: int = 100
    min_schedule_interval_seconds: float = 60.0
    max_templates_per_owner: int = 200
    max_template_bytes: int = 1_048_576
    max_streams_per_owner: int = 100

    def __post_init__(self) -> None:
        if self.retention_mode not in ("archive", "delete"):
            raise SystemExit(f"genjobs: GENJOBS_RETENTION_MODE={self.retention_mode!r}: archive or delete")
        for name, least in _LEAST.items():
            if getattr(self, name) < least:
                raise SystemExit(f"genjobs: GENJOBS_{name.upper()}={getattr(self, name)!r}: at least {least}")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read GENJOBS_* variables; unset ones keep their defaults."""
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get("GENJOBS_" + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, raw)
        return cls(**values)  # type: ignore[arg-type]

    def with_args(self, args: argparse.Namespace) -> Settings:
        """Settings with every flag that was given on the command line applied."""
        values = {f.name: getattr(args, f.name) for f in fields(self)}
        given = {k: _convert(k, str(v)) for k, v in values.items() if v is not None}
        return Settings(**{**self.__dict__, **given})

    @property
    def mongo_port_file(self) -> Path:
        return self.data_dir / "mongo.port"


_TYPES = {f.name: f.type for f in fields(Settings)}
_LEAST = {  # settings with a lower bound
    "archive_failed_days": 0.0,
    "archive_retention_days": 0.0,
    "concurrency": 1,
    "provider_failure_threshold": 1,
    "provider_probe_seconds": 0.05,
    "provider_max_outage_seconds": 0.0,
    "job_gap_seconds": 0.0,
    "max_queued_per_owner": 1,
    "max_schedules_per_owner": 1,
    "min_schedule_interval_seconds": 0.0,
    "max_templates_per_owner": 1,
    "max_template_bytes": 1024,
    "max_streams_per_owner": 1,
    "notify_claim_seconds": 0.5,
    "mail_per_owner_per_hour": 1,
    "http_max_header_bytes": 1024,
    "http_header_timeout_seconds": 0.1,
    "http_body_timeout_seconds": 0.1,
    "http_idle_seconds": 0.1,
    "http_max_connections": 1,
}


def _convert(name: str, raw: str) -> object:
    kind = _TYPES[name]
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw)
        if kind == "bool":
            return _boolean(raw)
    except ValueError as exc:
        raise SystemExit(f"genjobs: GENJOBS_{name.upper()}={raw!r} is not a valid {kind}") from exc
    return raw


def _boolean(raw: str) -> bool:
    if raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if raw.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, e.g. --data-dir for GENJOBS_DATA_DIR."""
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, dest=f.name, default=None, help=f"overrides GENJOBS_{f.name.upper()}")
