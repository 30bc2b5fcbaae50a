"""Issue 30 item 4: submit-to-start on an idle deployment of two server
processes on one database, for jobs submitted to the leader and to the other
replica; with --against REF, REF's servers too, alternated in the same run.

    .venv/bin/python bench/replica_bench.py
    .venv/bin/python bench/replica_bench.py --against main --jobs 100
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

import pymongo
from common import ServerProcess, make_settings, percentile, scratch, start_mongo

from genjobs.server.runtime.config import Settings
from tests.harness import wait_for

HERE = Path(__file__).resolve().parent.parent
DEFAULTS = Settings()


def tree_of(ref: str) -> str:
    """A PYTHONPATH under which `genjobs` is `ref`'s code (a `git archive` of
    it, laid out as the package): it comes before this checkout's editable install."""
    there = scratch()
    archive = subprocess.run(["git", "-C", str(HERE), "archive", ref], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(there)], input=archive.stdout, check=True)
    package = there / "pkg" / "genjobs"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text((there / "protos" / "genjobs" / "__init__.py").read_text())
    for name, folder in (("v1", there / "protos" / "genjobs" / "v1"), ("server", there / "server")):
        (package / name).symlink_to(folder)
    (package / "client").symlink_to(there / "client")
    return str(there / "pkg")


def latencies(mongo_uri: str, jobs: int, pythonpath: str) -> dict[str, list[float]]:
    """Submit-to-start (ms) of `jobs` no-op jobs to each of the leader and
    the other replica, one at a time, alternating, each on an idle deployment."""
    settings = make_settings(
        mongo_uri,
        scratch(),
        generator="noop",
        poll_seconds=DEFAULTS.poll_seconds,
        lease_seconds=DEFAULTS.lease_seconds,
    )
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = pythonpath
    try:
        servers = [ServerProcess(settings, scratch() / f"s{i}.log").start() for i in range(2)]
    finally:
        os.environ.pop("PYTHONPATH")
        if saved is not None:
            os.environ["PYTHONPATH"] = saved
    database = pymongo.MongoClient(mongo_uri)[settings.db_name]
    try:
        lease = wait_for(lambda: database.leases.find_one({"_id": "dispatcher"}), timeout=30)
        time.sleep(2 * DEFAULTS.lease_seconds / 3)  # followers' first keeper ticks have run

        def role(server: ServerProcess) -> str:
            assert server.process is not None
            return "leader" if f":{server.process.pid}:" in lease["holder"] else "other replica"

        found: dict[str, list[float]] = {"leader": [], "other replica": []}
        clients = [(role(s), s.client("bench")) for s in servers]
        for i in range(jobs):
            for name, client in clients:
                time.sleep(0.1)  # idle: the last job ended, the dispatcher waits
                t0 = time.time()
                job = client.submit("topic", topic=f"r{i}")
                while not (done := client.get(job.id)).start_time.seconds:
                    time.sleep(0.002)
                found[name].append((done.start_time.ToNanoseconds() / 1e9 - t0) * 1000)
        for _, client in clients:
            client.close()
        return found
    finally:
        for server in servers:
            server.terminate()
        database.client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100, help="jobs submitted to each replica")
    parser.add_argument("--against", metavar="REF", default="", help="also measure REF's code (e.g. main)")
    args = parser.parse_args()
    trees = {"this tree": ""}
    if args.against:
        trees[args.against] = tree_of(args.against)
    mongo = start_mongo()
    print(f"submit-to-start (ms), idle, 2 server processes on one nx-27017, {args.jobs} jobs to each:")
    for name, pythonpath in trees.items():
        for role, values in latencies(mongo.uri, args.jobs, pythonpath).items():
            print(
                f"  {name:10} to the {role:13}  p50 {percentile(values, 50):6.1f}"
                f"  p95 {percentile(values, 95):6.1f}  p99 {percentile(values, 99):6.1f}"
            )
    mongo.stop()


if __name__ == "__main__":
    main()
