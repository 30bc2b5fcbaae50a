"""A generation service for genjobs' `http` generator that reports its progress
back through JobService.ReportProgress while it works.

    python examples/generation_service.py --port 8080
    GENJOBS_GENERATOR=http GENJOBS_GENERATOR_URL=http://127.0.0.1:8080 genjobs-server

genjobs POSTs each job to /api/content/generate/<mode> with the job's params,
job_id, user_id, mode and `progress: {"target": "host:port", "token": "..."}`.
This service answers `{"success": true, "title", "content", "cost_cents"}`.
Its "work" is a pause per stage; put a real model call there.
"""

from __future__ import annotations

import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc

from genjobs.v1 import jobs_pb2, jobs_pb2_grpc

STAGES = (("research", 20), ("outline", 40), ("drafting", 80), ("editing", 95))


class AttemptEnded(Exception):
    """genjobs refused a report: the job was cancelled or its attempt is over."""


class Reporter:
    """Sends one attempt's progress reports to the genjobs server that asked."""

    def __init__(self, job_id: str, progress: dict[str, str] | None) -> None:
        self.job_id = job_id
        self.progress = progress
        self.channel = grpc.insecure_channel(progress["target"]) if progress else None

    def report(self, percentage: int, stage: str, message: str) -> None:
        if self.channel is None or self.progress is None:
            return  # asked by something other than genjobs: nobody to tell
        request = jobs_pb2.ReportProgressRequest(
            job_id=self.job_id,
            token=self.progress["token"],
            percentage=percentage,
            stage=stage,
            stage_progress=100,
            message=message,
        )
        try:
            jobs_pb2_grpc.JobServiceStub(self.channel).ReportProgress(request, timeout=5)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.PERMISSION_DENIED:
                raise AttemptEnded(error.details()) from None
            # Progress is best effort: the article matters more than the bar.

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()


def write_article(request: dict[str, Any], reporter: Reporter, step_seconds: float) -> dict[str, Any]:
    subject = request.get("topic") or ", ".join(request.get("keywords", [])) or "the subject"
    for stage, percentage in STAGES:
        time.sleep(step_seconds)  # the real work of this stage goes here
        reporter.report(percentage, stage, f"{stage} {subject}")
    words = int(request.get("word_count") or 800)
    body = " ".join(["Something worth reading about", subject + "."] * (words // 5 + 1)).split()[:words]
    return {"success": True, "title": subject.capitalize(), "content": " ".join(body), "cost_cents": 0}


def make_handler(step_seconds: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            reporter = Reporter(request["job_id"], request.get("progress"))
            try:
                status, answer = 200, write_article(request, reporter, step_seconds)
            except AttemptEnded as ended:
                status, answer = 409, {"success": False, "error": f"stopped: {ended}"}
            finally:
                reporter.close()
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--step-seconds", type=float, default=1.0, help="pause per stage")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args.step_seconds))
    print(f"generation service on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
