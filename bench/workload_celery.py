"""The Celery side of the workload bench: a task that streams a chat
completion through the `openai` client, writing its progress to redis at
most 4 times a second (as genjobs writes it to the database), its result in redis."""

from __future__ import annotations

import os
import time
from typing import Any

import openai
import redis
from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
BASE_URL = os.environ.get("BENCH_OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
PROGRESS_INTERVAL = 0.25
app = Celery("workload", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True)
_redis = redis.Redis.from_url(REDIS_URL)
_client = openai.OpenAI(base_url=BASE_URL, api_key="bench", max_retries=0)


@app.task(name="stream")
def stream(topic: str) -> dict[str, Any]:
    """Stream the answer for `topic`; its words, as the result."""
    words, last = 0, time.monotonic()
    answer = _client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": topic}], stream=True
    )
    with answer:
        for chunk in answer:
            for choice in chunk.choices:
                if choice.delta.content:
                    words += len(choice.delta.content.split())
            now = time.monotonic()
            if now - last >= PROGRESS_INTERVAL:
                last = now
                _redis.hset(f"progress:{topic}", mapping={"words": words})
    return {"words": words}
