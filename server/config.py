"""Settings from environment variables, each overridable by a genjobs-server flag."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
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
    webhook_secret: str = ""
    log_level: str = "INFO"
    retry_base_seconds: float = 1.0
    heartbeat_seconds: float = 15.0
    poll_seconds: float = 0.5
    webhook_backoff_seconds: float = 1.0
    # The longest any database call may take when the RPC sets no shorter deadline;
    # a database that does not answer in time is UNAVAILABLE, not a stall.
    db_timeout_seconds: float = 5.0

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


def _convert(name: str, raw: str) -> object:
    kind = _TYPES[name]
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw)
    except ValueError as exc:
        raise SystemExit(f"genjobs: GENJOBS_{name.upper()}={raw!r} is not a valid {kind}") from exc
    return raw


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, e.g. --data-dir for GENJOBS_DATA_DIR."""
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, dest=f.name, default=None, help=f"overrides GENJOBS_{f.name.upper()}")
