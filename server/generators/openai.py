"""`openai`: any OpenAI-compatible chat-completions endpoint (OpenAI, Ollama,
vLLM, llama.cpp's server, LM Studio) through the official `openai` package,
streamed, with progress from the words written so far."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any, cast

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
)
from genjobs.server.generators.prompts import Prompts
from genjobs.server.model.rules import DEFAULT_WORD_COUNT

CANCEL_CHECK_SECONDS = 0.05
STAGE = "drafting"


@dataclass(frozen=True)
class Price:
    """A model's price in US dollars per million tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def dollars(self, prompt_tokens: int, completion_tokens: int) -> float:
        """What a call with these token counts costs."""
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


def parse_prices(raw: str) -> dict[str, Price]:
    """GENJOBS_OPENAI_PRICES: `{"<model>": {"input_per_mtok": USD, "output_per_mtok": USD}}`."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
        return {
            str(model): Price(float(p["input_per_mtok"]), float(p["output_per_mtok"]))
            for model, p in data.items()
        }
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SystemExit(
            "genjobs: GENJOBS_OPENAI_PRICES must be JSON like "
            '{"gpt-4o-mini": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}}'
            f" ({type(exc).__name__}: {exc})"
        ) from None


@dataclass
class _Draft:
    """What has streamed so far."""

    pieces: list[str] = field(default_factory=list)
    words: int = 0
    in_word: bool = False  # the text so far ends inside a word
    model: str = ""
    finish_reason: str = ""
    usage: Any = None

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

    One event loop thread and one client serve every job (a client costs
    about 0.1 s to make); cancelling the job cancels the stream's task,
    which closes its connection.
    """

    streams = True
    stages = (STAGE,)  # one streamed draft: its words are the progress

    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str,
        prices: dict[str, Price],
        prompts: Prompts,
        timeout_seconds: float = 600.0,
    ) -> None:
        self.base_url = base_url
        # Local servers (Ollama, vLLM) need no key, but the client insists on one.
        self.api_key = api_key or "unused"
        self.model = model
        self.prices = prices
        self.prompts = prompts
        self.timeout = timeout_seconds
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: openai.AsyncOpenAI | None = None

    def generate(self, job: JobSpec, report_progress: ProgressFn, cancelled: threading.Event) -> Output:
        loop = self._started()
        future = asyncio.run_coroutine_threadsafe(self._stream(job, report_progress), loop)
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        while not done.wait(CANCEL_CHECK_SECONDS):
            if cancelled.is_set():
                future.cancel()  # cancels the task: its `async with` closes the connection
                raise GenerationCancelled()
        return future.result()

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="openai-generator", daemon=True).start()
                self._client = openai.AsyncOpenAI(
                    base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=self.timeout
                )
                self._loop = loop
            return self._loop

    async def _stream(self, job: JobSpec, report: ProgressFn) -> Output:
        assert self._client is not None
        extra = job.params.get("extra", {})
        model = extra.get("model") or self.model
        temperature = float(extra["temperature"]) if extra.get("temperature") else openai.omit
        target = int(job.params.get("word_count") or DEFAULT_WORD_COUNT)
        draft = _Draft(model=model)
        report(0, STAGE, 0, f"asking {excerpt(model, 60)}")
        try:
            stream = await self._client.chat.completions.create(
                model=model,
                messages=cast(Any, self.prompts.messages(job.mode, job.params)),
                stream=True,
                stream_options={"include_usage": True},
                temperature=temperature,
            )
            async with stream:
                async for chunk in stream:
                    draft.model = chunk.model or draft.model
                    if chunk.usage is not None:
                        draft.usage = chunk.usage
                    for choice in chunk.choices:
                        if choice.delta.content:
                            draft.add(choice.delta.content)
                        if choice.finish_reason:
                            draft.finish_reason = choice.finish_reason
                    done = min(99, draft.words * 100 // target)  # 100 is the completion's
                    report(done, STAGE, done, f"{draft.words} of {target} words")
        except openai.APIStatusError as exc:
            raise http_failure(
                exc.status_code, _provider_message(exc), retry_after(exc.response.headers)
            ) from None
        except openai.APITimeoutError as exc:
            raise GenerationFailed("GENERATOR_TIMEOUT", f"{model}: {exc}", True) from None
        except openai.APIConnectionError as exc:
            raise GenerationFailed("GENERATOR_UNREACHABLE", f"{self.base_url}: {exc}", True) from None
        except openai.APIError as exc:  # an error event in the middle of the stream
            raise GenerationFailed("GENERATOR_STREAM_ERROR", excerpt(exc.message), True) from None
        return self._output(model, draft)

    def _output(self, model: str, draft: _Draft) -> Output:
        if draft.finish_reason == "content_filter":
            raise GenerationFailed(
                "GENERATOR_REFUSED",
                f"{draft.model} stopped the article (finish_reason content_filter)",
                False,
            )
        content = "".join(draft.pieces)
        if not content.strip():
            raise GenerationFailed("GENERATOR_EMPTY", f"{draft.model} returned no text", True)
        metadata = {"generator": "openai", "model": draft.model, "finish_reason": draft.finish_reason}
        if draft.finish_reason == "length":
            metadata["truncated"] = "true"
        price = self.prices.get(model) or self.prices.get(draft.model)
        cents = 0
        if draft.usage is not None:
            prompt_tokens = int(draft.usage.prompt_tokens or 0)
            completion_tokens = int(draft.usage.completion_tokens or 0)
            metadata.update(prompt_tokens=str(prompt_tokens), completion_tokens=str(completion_tokens))
            if price is not None:
                cents = cost_cents(price.dollars(prompt_tokens, completion_tokens))
        if price is None or draft.usage is None:
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
