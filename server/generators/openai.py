"""`openai`: any OpenAI-compatible chat-completions endpoint (OpenAI, Ollama,
vLLM, llama.cpp's server, LM Studio, a LiteLLM proxy) through the official
`openai` package, streamed, with progress from the words written so far.

The endpoints are the providers of `providers.py`: a job runs on the model
its `params.extra["model"]` names, or the default; while that model's
provider answers 5xx or 529 or cannot be reached, on its fallbacks in turn."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from genjobs.server.generators.base import (
    GenerationCancelled,
    GenerationFailed,
    JobSpec,
    Output,
    ProgressFn,
    cost_cents,
    excerpt,
    http_failure,
    retry_after,
    title_of,
    when_set,
)
from genjobs.server.generators.prompts import Prompts
from genjobs.server.generators.providers import Catalog, Model, Price, Providers, parse_prices
from genjobs.server.model.loops import new_event_loop
from genjobs.server.model.rules import DEFAULT_WORD_COUNT

CANCEL_CHECK_SECONDS = 0.05
STAGE = "drafting"
# The failures that are the provider's, not the job's: a fallback may take over.
PROVIDER_FAILURES = ("GENERATOR_UNAVAILABLE", "GENERATOR_UNREACHABLE")

__all__ = ["OpenAIGenerator", "Price", "parse_prices"]


@dataclass
class _Draft:
    """What has streamed so far."""

    pieces: list[str] = field(default_factory=list)
    words: int = 0
    in_word: bool = False  # the text so far ends inside a word
    model: str = ""
    finish_reason: str = ""
    usage: dict[str, Any] | None = None  # the stream's last chunk's

    def take(self, chunk: object) -> None:
        """One streamed chunk, the JSON of a ChatCompletionChunk (a provider's
        odd field is passed over, as openai's unvalidated models would)."""
        if not isinstance(chunk, dict):
            return
        self.model = _text(chunk.get("model")) or self.model
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict) and (content := _text(delta.get("content"))):
                self.add(content)
            if reason := _text(choice.get("finish_reason")):
                self.finish_reason = reason

    def add(self, text: str) -> None:
        """Append a piece, counting words across piece boundaries."""
        self.pieces.append(text)
        count = len(text.split())
        if count and self.in_word and not text[0].isspace():
            count -= 1  # the first word continues the last piece's
        self.words += count
        self.in_word = not text[-1].isspace()


class OpenAIGenerator:
    """Streams a chat completion and turns it into an article.

    One event loop thread serves every job, with one client per provider
    (a client costs about 0.1 s to make); cancelling the job cancels the
    stream's task, which closes its connection.
    """

    streams = True
    stages = (STAGE,)  # one streamed draft: its words are the progress

    def __init__(self, providers: Providers, prompts: Prompts, timeout_seconds: float = 600.0) -> None:
        self.providers = providers
        self.prompts = prompts
        # What the service checks and estimates before a job runs (handed over by the wiring).
        self.catalog = Catalog(providers, prompts)
        self.timeout = timeout_seconds
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: dict[str, openai.AsyncOpenAI] = {}

    def generate(self, job: JobSpec, report_progress: ProgressFn, cancelled: threading.Event) -> Output:
        loop = self._started()
        future = asyncio.run_coroutine_threadsafe(self._run(job, report_progress), loop)
        done = threading.Event()  # the stream ended, or the job was cancelled
        future.add_done_callback(lambda _: done.set())
        tick = None if when_set(cancelled, done.set) else CANCEL_CHECK_SECONDS  # a plain Event is polled
        while not done.wait(tick) and not cancelled.is_set():
            pass
        if not future.done():  # cancelled
            future.cancel()  # cancels the task: its `async with` closes the connection
            raise GenerationCancelled()
        return future.result()

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = new_event_loop()
                threading.Thread(target=loop.run_forever, name="openai-generator", daemon=True).start()
                self._loop = loop
            return self._loop

    def _client(self, provider: str) -> openai.AsyncOpenAI:
        """The provider's client, made on first use (on the generator's loop)."""
        if provider not in self._clients:
            spec = self.providers.providers[provider]
            self._clients[provider] = openai.AsyncOpenAI(
                base_url=spec.base_url,
                # Local servers (Ollama, vLLM) need no key, but the client insists on one.
                api_key=spec.api_key or "unused",
                max_retries=0,
                timeout=self.timeout,
            )
        return self._clients[provider]

    async def _run(self, job: JobSpec, report: ProgressFn) -> Output:
        """The job on its model, then on each fallback while providers fail."""
        chain = self.providers.chain(job.params.get("extra", {}).get("model", ""))
        passed: list[str] = []  # why each earlier model was passed over
        for position, model in enumerate(chain):
            try:
                output = await self._stream(job, model, report)
            except GenerationFailed as exc:
                last = position == len(chain) - 1
                if last or exc.code not in PROVIDER_FAILURES or exc.started:
                    if passed:
                        exc.message = f"{exc.message} (after {'; '.join(passed)})"
                    raise
                passed.append(f"{exc.message} ({exc.code})")
                continue
            if passed:
                output.metadata["fallback_from"] = chain[0].name
                output.metadata["fallback_reason"] = excerpt("; ".join(passed), 500)
            return output
        raise AssertionError("a chain has at least one model")

    async def _stream(self, job: JobSpec, model: Model, report: ProgressFn) -> Output:
        client = self._client(model.provider)
        extra = job.params.get("extra", {})
        body: dict[str, Any] = {
            "model": model.name,
            "messages": self.prompts.messages(job.mode, job.params),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if extra.get("temperature"):
            body["temperature"] = float(extra["temperature"])
        target = int(job.params.get("word_count") or DEFAULT_WORD_COUNT)
        draft = _Draft(model=model.name)
        report(0, STAGE, 0, f"asking {excerpt(model.name, 60)} on {excerpt(model.provider, 40)}")
        try:
            # The chunks as plain JSON: openai's typed chunk models took about
            # half of this loop's CPU a token (docs/performance.md). The client
            # still sends, times out, decodes the events and raises on an
            # error event, as `chat.completions.create` would.
            stream = await client.post(
                "/chat/completions",
                body=body,
                cast_to=object,
                stream=True,
                stream_cls=openai.AsyncStream[object],
            )
            async with stream:
                async for chunk in stream:
                    draft.take(chunk)
                    done = min(99, draft.words * 100 // target)  # 100 is the completion's
                    report(done, STAGE, done, f"{draft.words} of {target} words")
        except openai.APIStatusError as exc:
            failure = http_failure(exc.status_code, _provider_message(exc), retry_after(exc.response.headers))
        except openai.APITimeoutError as exc:
            if isinstance(exc.__cause__, httpx.ConnectTimeout):  # never reached: an outage, not the job's
                base_url = self.providers.providers[model.provider].base_url
                failure = GenerationFailed("GENERATOR_UNREACHABLE", f"{base_url}: connect timeout", True)
            else:
                failure = GenerationFailed("GENERATOR_TIMEOUT", f"{model.name}: {exc}", True)
        except openai.APIConnectionError as exc:
            base_url = self.providers.providers[model.provider].base_url
            failure = GenerationFailed("GENERATOR_UNREACHABLE", f"{base_url}: {exc}", True)
        except openai.APIError as exc:  # an error event in the middle of the stream
            failure = GenerationFailed("GENERATOR_STREAM_ERROR", excerpt(exc.message), True)
        else:
            return self._output(model, draft)
        # Which model and provider it came from; whether any text had come (no fallback then).
        failure.provider, failure.model, failure.started = model.provider, model.name, bool(draft.pieces)
        failure.message = f"{model.name} on {model.provider}: {failure.message}"
        raise failure from None

    def _output(self, model: Model, draft: _Draft) -> Output:
        if draft.finish_reason == "content_filter":
            raise GenerationFailed(
                "GENERATOR_REFUSED",
                f"{draft.model} stopped the article (finish_reason content_filter)",
                False,
                provider=model.provider,
                model=model.name,
            )
        content = "".join(draft.pieces)
        if not content.strip():
            raise GenerationFailed(
                "GENERATOR_EMPTY",
                f"{draft.model} returned no text",
                True,
                provider=model.provider,
                model=model.name,
            )
        metadata = {
            "generator": "openai",
            "model": model.name,
            "provider": model.provider,
            "finish_reason": draft.finish_reason,
        }
        if draft.model != model.name:
            metadata["provider_model"] = draft.model  # the provider's own name for it (a dated version)
        if draft.finish_reason == "length":
            metadata["truncated"] = "true"
        cents = 0
        if draft.usage is not None:
            prompt_tokens = _count(draft.usage.get("prompt_tokens"))
            completion_tokens = _count(draft.usage.get("completion_tokens"))
            metadata.update(prompt_tokens=str(prompt_tokens), completion_tokens=str(completion_tokens))
            if model.price is not None:
                cents = cost_cents(model.price.dollars(prompt_tokens, completion_tokens))
        if model.price is None or draft.usage is None:
            metadata["cost_unknown"] = "true"
        return Output(
            content=content,
            title=title_of(content),
            word_count=len(content.split()),
            cost_cents=cents,
            metadata=metadata,
        )


def _provider_message(error: openai.APIStatusError) -> str:
    """The provider's own words: `{"error": {"message": ...}}`, else the body."""
    body = error.body
    if isinstance(body, dict):
        message = body.get("message") or body.get("error")
        if isinstance(message, dict):
            message = message.get("message")
        if message:
            return str(message)
    try:
        return error.response.text
    except Exception:  # a streamed body that was never read
        return error.message


def _text(value: object) -> str:
    """A chunk's string field, or "" when it is missing or not a string."""
    return value if isinstance(value, str) else ""


def _count(value: object) -> int:
    """A usage count, or 0 when it is missing or not a number."""
    return int(value) if isinstance(value, int | float) else 0
