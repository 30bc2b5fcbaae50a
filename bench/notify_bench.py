"""Issue 21 figure: delivery latency from a job's end (its stored end_time) to
its webhook arriving at a local HTTP receiver and to its mail arriving at a
local SMTP server (aiosmtpd), p50 of 20 jobs run one after another on a
genjobs-server subprocess.

    .venv/bin/python bench/notify_bench.py
"""

from __future__ import annotations

from dataclasses import replace

from common import ServerProcess, make_settings, median, percentile, scratch, start_mongo

from genjobs.server.runtime.embedded import free_port
from tests.harness import wait_for
from tests.receivers import MailServer, Receiver

JOBS = 20


def main() -> None:
    mongo = start_mongo()
    receiver = Receiver()
    smtp = MailServer(free_port()).start()
    settings = replace(
        make_settings(mongo.uri, scratch()),
        smtp_url=f"smtp://127.0.0.1:{smtp.port}",
        webhook_allow_private=True,
    )
    server = ServerProcess(settings, scratch() / "server.log").start()
    hook_ms: list[float] = []
    mail_ms: list[float] = []
    try:
        with server.client() as client:
            for i in range(JOBS):
                path = f"/job{i}"
                job = client.submit(
                    "topic",
                    topic=f"bench {i}",
                    word_count=60,
                    notify_url=receiver.url(path),
                    notify_email="b@example.com",
                )
                hook = wait_for(lambda path=path: receiver.on(path), timeout=30)[0]
                wait_for(lambda i=i: len(smtp.inbox.messages) > i, timeout=30)
                ended = client.get(job.id).end_time.ToMicroseconds() / 1e6
                hook_ms.append((hook.at - ended) * 1000)
                mail_ms.append((smtp.inbox.messages[i][1] - ended) * 1000)
    finally:
        server.terminate()
        smtp.stop()
        receiver.close()
        mongo.stop()
    for name, values in (("webhook", hook_ms), ("mail", mail_ms)):
        print(
            f"job end -> {name} received: p50 {median(values):.1f} ms, "
            f"p90 {percentile(values, 90):.1f} ms ({JOBS} jobs)"
        )


if __name__ == "__main__":
    main()
