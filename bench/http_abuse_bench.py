"""Issue 26 figure: gRPC GetJob p99 while the HTTP port takes 100 MB request
headers, against the same calls with the HTTP port left alone.

One server process (the HTTP face runs on its gRPC event loop). Rounds
alternate, calm then abused; in an abused round a raw socket keeps sending
a GET whose one header grows toward 100 MB (a new connection each time the
server closes one) while one gRPC client calls GetJob back to back for the
round's length: one header every 0.1 s (the issue's case, many times over),
then back to back. Prints each round's p99, the medians and their ratio
(goal: within 1.5x), what the headers were answered, and the server's CPU
in the calm and the abused rounds (the GetJob calls' share included).

    .venv/bin/python bench/http_abuse_bench.py [rounds]
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import replace

import grpc
from common import ServerProcess, make_settings, median, percentile, process_cpu, scratch, start_mongo

from genjobs.server.runtime.embedded import free_port
from genjobs.v1 import jobs_pb2, jobs_pb2_grpc
from tests.harness import wait_for

HEADER_BYTES = 100 * 1024 * 1024
CHUNK = 1024 * 1024
ROUND_SECONDS = 4.0
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
# (pause between headers, label): the case, one header after another with
# a pause; then back to back, a new connection as soon as one is refused.
PACES = [(0.1, "one every 0.1 s"), (0.0, "back to back")]


def huge_header(port: int) -> tuple[int, str]:
    """One GET with a header growing toward 100 MB: (bytes the server took, its answer's status line)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    sent = 0
    try:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nX-Flood: ")
        filler = b"a" * CHUNK
        while sent < HEADER_BYTES:
            sent += sock.send(filler)
        sock.sendall(b"\r\n\r\n")
    except OSError:  # closed by the server (reset, broken pipe)
        pass
    try:
        answer = sock.recv(200)
    except OSError:
        answer = b""
    sock.close()
    return sent, answer.split(b"\r\n", 1)[0].decode(errors="replace") or "closed"


def flood(port: int, done: threading.Event, pause: float, answers: Counter[str], taken: list[int]) -> None:
    """100 MB headers, one after another (`pause` seconds apart), until `done`."""
    while not done.is_set():
        sent, status = huge_header(port)
        answers[status] += 1
        taken.append(sent)
        done.wait(pause)


def get_job_round(
    stub: jobs_pb2_grpc.JobServiceStub, job_id: str, metadata: tuple[tuple[str, str]]
) -> list[float]:
    """GetJob back to back for ROUND_SECONDS: each call's seconds."""
    latencies = []
    end = time.perf_counter() + ROUND_SECONDS
    while time.perf_counter() < end:
        started = time.perf_counter()
        stub.GetJob(jobs_pb2.GetJobRequest(id=job_id), metadata=metadata, timeout=120)
        latencies.append(time.perf_counter() - started)
    return latencies


def main() -> None:
    mongo = start_mongo()
    http_port = free_port()
    settings = replace(make_settings(mongo.uri, scratch()), http_port=str(http_port))
    server = ServerProcess(settings, scratch() / "server.log").start()
    with server.client() as c:
        job = c.submit("topic", topic="Read while the HTTP port is flooded", word_count=200)
        wait_for(lambda: c.get(job.id).status == jobs_pb2.JOB_STATUS_COMPLETED, timeout=60)
    metadata = (("authorization", f"Bearer {server.token()}"),)
    assert server.process is not None
    pid = server.process.pid
    channel = grpc.insecure_channel(server.target)
    stub = jobs_pb2_grpc.JobServiceStub(channel)
    get_job_round(stub, job.id, metadata)  # warm up
    print(
        f"gRPC GetJob back to back, {ROUNDS} alternating rounds of {ROUND_SECONDS:.0f} s, one server process"
    )
    for pause, label in PACES:
        calm, abused = [], []
        answers: Counter[str] = Counter()
        taken: list[int] = []
        calm_cpu = flood_cpu = 0.0
        for _ in range(ROUNDS):
            before = process_cpu(pid)
            calm.append(percentile(get_job_round(stub, job.id, metadata), 99) * 1000)
            calm_cpu += process_cpu(pid) - before
            before = process_cpu(pid)
            done = threading.Event()
            flooder = threading.Thread(
                target=flood, args=(http_port, done, pause, answers, taken), daemon=True
            )
            flooder.start()
            abused.append(percentile(get_job_round(stub, job.id, metadata), 99) * 1000)
            done.set()
            flooder.join(300)
            flood_cpu += process_cpu(pid) - before
        print(f"100 MB headers {label}:")
        for name, p99s in (("HTTP port left alone", calm), ("HTTP port taking 100 MB heads", abused)):
            print(f"  {name:<30} p99 median {median(p99s):8.2f} ms  (rounds {[round(x, 2) for x in p99s]})")
        print(f"  abused / calm: {median(abused) / median(calm):.2f}x (goal: <= 1.5x)")
        print(
            f"  100 MB headers sent: {sum(answers.values())}, answered {dict(answers)};"
            f" the most one connection's send() handed the kernel: {max(taken) / 1024:.0f} KB"
        )
        print(
            f"  server CPU (GetJob calls included): calm rounds {calm_cpu:.1f} s, abused {flood_cpu:.1f} s:"
            f" {(flood_cpu - calm_cpu) / max(1, sum(answers.values())) * 1000:.2f} ms a header"
        )
    channel.close()
    server.terminate()
    mongo.stop()


if __name__ == "__main__":
    main()
