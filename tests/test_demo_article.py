"""The demo generator writes an article: a heading, paragraphs, whole sentences
(issue 18 item 10)."""

from __future__ import annotations

import re

from genjobs.client import GenJobsClient
from genjobs.v1 import jobs_pb2
from tests.harness import wait_for


def completed(client: GenJobsClient, job_id: str) -> jobs_pb2.Job:
    return wait_for(lambda: (j := client.get(job_id)).status == jobs_pb2.JOB_STATUS_COMPLETED and j, 30)


def test_demo_article_reads_as_an_article(alice: GenJobsClient) -> None:
    asked = {"topic": "Green tea", "keywords": ["matcha", "sencha"], "word_count": 333}
    first = completed(alice, alice.submit("topic", **asked).id).result.content
    heading, *paragraphs = first.split("\n\n")
    assert heading == "# Green tea"
    assert len(paragraphs) >= 4
    for paragraph in paragraphs:
        assert "\n" not in paragraph
        sentences = re.split(r"(?<=[.!?]) ", paragraph)
        assert len(sentences) >= 2, paragraph
        for sentence in sentences:
            assert sentence[0].isupper() and sentence[-1] in ".!?", sentence
    assert len(first.split()) == 333
    again = completed(alice, alice.submit("topic", **asked).id).result.content
    assert again == first  # deterministic
