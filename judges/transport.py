"""Judge transports: chat conversations in, raw judge text out.

``OpenAITransport`` talks to any OpenAI-compatible endpoint (OpenAI, a ``vllm`` server,
LiteLLM, …) with the ``openai`` async client: bounded concurrency (default 8), a tqdm
bar, and its own retry loop: connection errors, timeouts, 408/409/429 and 5xx are retried
with bounded exponential backoff and jitter (``Retry-After`` honoured up to
``backoff_max``), other 4xx are not. A request that still fails is a :class:`Reply` with
an ``error`` (the judge turns it into ``unscored``); after ``abort_after`` failures in a
row the whole batch stops with :class:`JudgeError` (a dead endpoint should not turn a
run into thousands of unscored verdicts). The API key is held in memory only.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from dataclasses import dataclass
from typing import Any, Coroutine, Protocol, Sequence, TypeVar

from harness.errors import HarnessError

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
T = TypeVar("T")


class JudgeError(HarnessError):
    """A judge cannot run: endpoint down, key missing, model not loadable.

    ``replies`` holds what a batch got before it was abandoned, so finished judgments can be cached."""

    def __init__(self, message: str, replies: list["Reply"] | None = None) -> None:
        super().__init__(message)
        self.replies = replies or []


@dataclass(frozen=True)
class Reply:
    text: str | None  # None: the request failed (see error)
    error: str = ""
    attempts: int = 1


class Transport(Protocol):
    model_id: str  # identifies the judge model in cache keys

    def complete(self, conversations: Sequence[Messages], max_tokens: int, temperature: float,
                 progress: bool = False, desc: str = "judge") -> list[Reply]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 4  # retries after the first attempt
    backoff_base: float = 1.0  # seconds; attempt k waits base * 2**k (with jitter) ...
    backoff_max: float = 30.0  # ... capped here, Retry-After included
    timeout: float = 60.0  # seconds per request
    abort_after: int = 20  # consecutive failed requests before the batch is abandoned

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        d = min(self.backoff_max, self.backoff_base * 2 ** attempt) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            d = max(d, min(retry_after, self.backoff_max))
        return d


RETRY_STATUS = {408, 409, 429}


def _retry_after(err: Any) -> float | None:
    response = getattr(err, "response", None)
    try:
        value = response.headers.get("retry-after") if response is not None else None
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from sync code, also when an event loop is already running (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class OpenAITransport:
    """Chat completions on an OpenAI-compatible endpoint."""

    def __init__(self, model: str, base_url: str | None, api_key: str, concurrency: int = 8,
                 policy: RetryPolicy = RetryPolicy(), token_param: str = "max_tokens") -> None:
        self.model = model
        self.base_url = base_url
        self._api_key = api_key
        self.concurrency = concurrency
        self.policy = policy
        self.token_param = token_param
        self.model_id = f"openai:{base_url or 'default'}:{model}"
        self.requests_sent = 0  # HTTP requests, retries included (for tests and logs)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAITransport(model={self.model!r}, base_url={self.base_url!r})"

    def complete(self, conversations: Sequence[Messages], max_tokens: int, temperature: float,
                 progress: bool = False, desc: str = "judge") -> list[Reply]:
        if not conversations:
            return []
        return run_sync(self._complete_all(list(conversations), max_tokens, temperature, progress, desc))

    async def _complete_all(self, convs: list[Messages], max_tokens: int, temperature: float, progress: bool,
                            desc: str) -> list[Reply]:
        from openai import AsyncOpenAI
        from tqdm.auto import tqdm

        client = AsyncOpenAI(base_url=self.base_url, api_key=self._api_key, max_retries=0,
                             timeout=self.policy.timeout)
        sem = asyncio.Semaphore(self.concurrency)
        state = {"failures_in_a_row": 0, "last_error": ""}
        bar = tqdm(total=len(convs), desc=desc, unit="req", disable=not progress)

        async def one(messages: Messages) -> Reply:
            async with sem:
                if state["failures_in_a_row"] >= self.policy.abort_after:
                    return Reply(None, "not sent: batch abandoned", 0)
                reply = await self._request(client, messages, max_tokens, temperature)
            state["failures_in_a_row"] = 0 if reply.text is not None else state["failures_in_a_row"] + 1
            if reply.text is None:
                state["last_error"] = reply.error
            bar.update(1)
            return reply

        try:
            replies = await asyncio.gather(*(one(m) for m in convs))
        finally:
            bar.close()
            await client.close()
        if state["failures_in_a_row"] >= self.policy.abort_after:
            raise JudgeError(f"judge endpoint {self.base_url or 'api.openai.com'} (model {self.model!r}): "
                             f"{self.policy.abort_after} requests in a row failed; last error: {state['last_error']}. "
                             "Fix the endpoint and re-run: finished judgments are cached.", list(replies))
        return replies

    async def _request(self, client: Any, messages: Messages, max_tokens: int, temperature: float) -> Reply:
        import openai

        error = ""
        for attempt in range(self.policy.max_retries + 1):
            retry_after = None
            try:
                self.requests_sent += 1
                resp = await client.chat.completions.create(
                    model=self.model, messages=messages, temperature=temperature, **{self.token_param: max_tokens})
                content = resp.choices[0].message.content if resp.choices else None
                return Reply(content or "", attempts=attempt + 1)
            except openai.APITimeoutError:
                error = f"timeout after {self.policy.timeout:g}s"
            except openai.APIConnectionError as e:
                error = f"connection error: {e.__cause__ or e}"
            except openai.APIStatusError as e:
                error = f"HTTP {e.status_code}: {str(e.message)[:200]}"
                if e.status_code not in RETRY_STATUS and e.status_code < 500:
                    return Reply(None, error, attempt + 1)  # 400/401/404…: retrying cannot help
                retry_after = _retry_after(e)
            except openai.OpenAIError as e:  # malformed response body and the like
                return Reply(None, f"{type(e).__name__}: {e}", attempt + 1)
            if attempt < self.policy.max_retries:
                delay = self.policy.delay(attempt, retry_after)
                log.debug("judge request failed (%s); retry %d in %.2fs", error, attempt + 1, delay)
                await asyncio.sleep(delay)
        log.warning("judge request gave up after %d attempts: %s", self.policy.max_retries + 1, error)
        return Reply(None, f"gave up after {self.policy.max_retries + 1} attempts; last: {error}",
                     self.policy.max_retries + 1)

    def close(self) -> None:
        pass  # one client per batch, closed with it
