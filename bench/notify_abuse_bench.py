"""Issue 26 figure: how late a healthy webhook arrives while another user's
ten trickling receivers (a byte every second, never a whole answer) are open.

One genjobs-server subprocess; "mallory" submits 20 jobs whose webhooks go to
10 trickling receivers on 10 ports (two each), and once they are all being
sent, "bob" submits jobs one after another whose webhook goes to a healthy
local receiver. Prints the median and the worst of the time from each of
bob's jobs ending (its stored end_time) to his webhook arriving, and how many
trickling connections were open meanwhile.

    .venv/bin/python bench/notify_abuse_bench.py
"""

from __future__ import annotations

from dataclasses import replace

from common import ServerProcess, make_settings, median, scratch, start_mongo

from tests.harness import wait_for
from tests.receivers import Receiver, Trickler

RUNS = 7
PORTS = 10
PATIENCE = 120.0  # seconds to wait for one of bob's webhooks before calling it lost


def main() -> None:
    mongo = start_mongo()
    receiver = Receiver()
    tricklers = [Trickler(interval=1.0) for _ in range(PORTS)]
    settings = replace(make_settings(mongo.uri, scratch()), webhook_allow_private=True)
    server = ServerProcess(settings, scratch() / "server.log").start()
    late: list[float] = []
    held: list[int] = []
    try:
        with server.client("mallory") as mallory, server.client("bob") as bob:
            for i in range(2 * PORTS):
                mallory.submit("topic", topic=f"t{i}", word_count=60, notify_url=tricklers[i % PORTS].url())
            wait_for(lambda: len(mallory.notifications().notifications) == 2 * PORTS, timeout=120)
            wait_for(lambda: sum(t.open for t in tricklers) >= 4, timeout=60)
            for i in range(RUNS):
                path = f"/bob{i}"
                job = bob.submit("topic", topic=f"bench {i}", word_count=60, notify_url=receiver.url(path))
                try:
                    hook = wait_for(lambda path=path: receiver.on(path), timeout=PATIENCE)[0]
                except AssertionError:
                    print(f"bob's webhook did not arrive within {PATIENCE:g} s after his job ended")
                    return
                held.append(sum(t.open for t in tricklers))
                ended = bob.get(job.id).end_time.ToMicroseconds() / 1e6
                late.append(hook.at - ended)
    finally:
        server.terminate()
        for trickler in tricklers:
            trickler.close()
        receiver.close()
        mongo.stop()
    print(
        f"healthy webhook with {PORTS} trickling receivers open: median {median(late) * 1000:.0f} ms, "
        f"worst {max(late) * 1000:.0f} ms ({RUNS} runs; trickling connections open: {min(held)}-{max(held)})"
    )


if __name__ == "__main__":
    main()
