"""Fuzz figures: the hostile requests of tests/test_fuzz.py sent to a real
server, counted by status code, with the largest error trailer seen.

    .venv/bin/python bench/fuzz_report.py [examples per RPC, default 50]

Any INTERNAL, UNKNOWN or RESOURCE_EXHAUSTED answer, oversized trailer or
write by a refused call stops it with hypothesis' smallest failing request.
"""

from __future__ import annotations

import os
import sys
import time
import warnings

EXAMPLES = sys.argv[1] if len(sys.argv) > 1 else "50"
os.environ["GENJOBS_FUZZ_EXAMPLES"] = EXAMPLES  # read when tests.test_fuzz is imported

from common import ServerThread, make_settings, scratch, start_mongo  # noqa: E402

from tests import test_fuzz  # noqa: E402


def main() -> None:
    # The server's dispatcher draws retry jitter from `random` in this process.
    warnings.filterwarnings("ignore", "Do not use the `random` module")
    mongo = start_mongo()
    server = ServerThread(make_settings(mongo.uri, scratch())).start()
    fuzzer = test_fuzz.Fuzzer(server, mongo.uri)
    try:
        test_fuzz.seed(fuzzer)
        started = time.monotonic()
        for rpc in sorted(test_fuzz.REQUESTS):
            test_fuzz.test_hostile_requests_get_a_readable_deliberate_answer(fuzzer, rpc)
        elapsed = time.monotonic() - started
    finally:
        fuzzer.close()
        server.stop(grace=0.1)
        mongo.stop()
    tally = test_fuzz.TALLY
    print(f"fuzz, up to {EXAMPLES} examples per RPC, {elapsed:.1f} s")
    print(f"  requests tried: {sum(tally.by_code.values())} over {len(tally.by_rpc)} RPCs")
    for code, n in tally.by_code.most_common():
        print(f"  {code:<20} {n}")
    print(f"  largest error trailer: {tally.largest_trailer} bytes ({tally.largest_trailer_rpc}; limit 2048)")
    print("  per RPC: " + ", ".join(f"{rpc} {n}" for rpc, n in sorted(tally.by_rpc.items())))


if __name__ == "__main__":
    main()
