"""Judge transports: chat conversations in, raw judge text out.

``OpenAITransport`` talks to any OpenAI-compatible endpoint (OpenAI, a ``vllm`` server,
LiteLLM, …) with the ``openai`` async client: bounded concurrency (default 8), a tqdm
bar, and the client's own retries (``max_retries``): connection errors, timeouts, 408/409/429
and 5xx are retried, other 4xx are not, each wait being ``RetryPolicy.delay`` (bounded
exponential backoff with jitter, ``Retry-After`` honoured up to ``backoff_max``). A request that still fails is a :class:`Reply` with
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


def _client(base_url: str | None, api_key: str, policy: RetryPolicy) -> Any:
    """An ``AsyncOpenAI`` client that retries ``policy.max_retries`` times, waiting
    ``policy.delay(attempt, Retry-After)`` before each retry instead of its own backoff."""
    from openai import AsyncOpenAI

    class Client(AsyncOpenAI):
        def _calculate_retry_timeout(self, remaining_retries: int, options: Any,
                                     response_headers: Any = None) -> float:
            attempt = options.get_max_retries(self.max_retries) - remaining_retries
            return policy.delay(attempt, self._parse_retry_after_header(response_headers))

    return Client(base_url=base_url, api_key=api_key, max_retries=policy.max_retries, timeout=policy.timeout)


def _attempts(err: Any) -> int:
    """Requests the client sent for a failed call (its retry-count header on the last one)."""
    request = getattr(getattr(err, "response", None), "request", None) or getattr(err, "request", None)
    try:
        return int(request.headers.get("x-stainless-retry-count", 0)) + 1
    except (AttributeError, TypeError, ValueError):
        return 1


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

    def __repr__(self) -> str:  # never show the key
        return f"OpenAITransport(model={self.model!r}, base_url={self.base_url!r})"

    def complete(self, conversations: Sequence[Messages], max_tokens: int, temperature: float,
                 progress: bool = False, desc: str = "judge") -> list[Reply]:
        if not conversations:
            return []
        return run_sync(self._complete_all(list(conversations), max_tokens, temperature, progress, desc))

    async def _complete_all(self, convs: list[Messages], max_tokens: int, temperature: float, progress: bool,
                            desc: str) -> list[Reply]:
        from tqdm.auto import tqdm

        client = _client(self.base_url, self._api_key, self.policy)
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

        try:
            raw = await client.chat.completions.with_raw_response.create(
                model=self.model, messages=messages, temperature=temperature, **{self.token_param: max_tokens})
            resp = raw.parse()
            content = resp.choices[0].message.content if resp.choices else None
            return Reply(content or "", attempts=raw.retries_taken + 1)
        except openai.APIStatusError as e:
            error = f"HTTP {e.status_code}: {str(e.message)[:200]}"
            if not self._retried(e.status_code):
                return Reply(None, error, _attempts(e))  # 400/401/404…: retrying cannot help
            attempts = _attempts(e)
        except openai.APITimeoutError as e:
            error, attempts = f"timeout after {self.policy.timeout:g}s", _attempts(e)
        except openai.APIConnectionError as e:
            error, attempts = f"connection error: {e.__cause__ or e}", _attempts(e)
        except openai.OpenAIError as e:  # malformed response body and the like
            return Reply(None, f"{type(e).__name__}: {e}", _attempts(e))
        log.warning("judge request gave up after %d attempts: %s", attempts, error)
        return Reply(None, f"gave up after {attempts} attempts; last: {error}", attempts)

    @staticmethod
    def _retried(status: int) -> bool:
        """The statuses the client retries: 408, 409, 429 and 5xx."""
        return status in (408, 409, 429) or status >= 500

    def close(self) -> None:
        pass  # one client per batch, closed with it
