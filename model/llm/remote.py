"""A reasoner on a shared OpenAI-compatible inference server (vLLM, llama.cpp, Ollama, TGI), over HTTP.

Many nodes share one pool of GPUs this way: the server batches every node's requests itself (continuous
batching), so this side sends one chat completion per utterance, asks for the strict JSON answer through the
server's structured output where it has one, and reads it with the same parser as the local model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from model.llm.messages import LLMOutputError, ReasoningRequest, ReasoningResult
from model.llm.prompts import SYSTEM_PROMPT, GeneratedAnswer, json_user_message, parse_generated_answer
from model.settings import LLMSettings

logger = logging.getLogger(__name__)

# json_schema: OpenAI's own form (vLLM, llama.cpp's llama-server, Ollama, TGI's OpenAI route);
# json_object: {"type": "json_object", "schema": ...} (llama-cpp-python's server); none: the prompt alone.
ResponseFormat = Literal["json_schema", "json_object", "none"]
# Worth another try: the server is busy or restarting, or a proxy in front of it is.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class RemoteLLMError(RuntimeError):
    """The inference server gave no usable answer (unreachable, timed out, or an HTTP error)."""


@dataclass(slots=True)
class RemoteStats:
    requests: int = 0  # answers asked for
    attempts: int = 0  # HTTP requests sent, retries included
    retries: int = 0
    failures: int = 0  # requests that ended without a usable answer (server or parse)


def answer_schema() -> dict[str, Any]:
    """The JSON Schema of a generate-mode answer, for the server's constrained decoding."""
    schema = GeneratedAnswer.model_json_schema()
    schema["properties"]["labels"]["maxItems"] = 3  # the prompt asks for up to three
    # Grammar-constrained decoders (llama.cpp's) enforce enums but not a number's minimum and maximum, and
    # small models then answer "arousal": 2: tenths from -1 to 1 keep every answer in range.
    tenths = [round(-1 + i / 10, 1) for i in range(21)]
    for name in ("valence", "arousal"):
        schema["properties"][name] = {"type": "number", "enum": tenths}
    schema.pop("title", None)
    return schema


class RemoteReasoner:
    """Answers one request at a time over HTTP; one client session and concurrency limit per event loop."""

    def __init__(self, settings: LLMSettings) -> None:
        """settings: backend openai, with the server's `url` (LLMSettings checks it)."""
        if settings.url is None:
            raise ValueError("the remote reasoner needs emotion.llm.url")
        self.settings = settings
        self.stats = RemoteStats()
        self._base = settings.url.rstrip("/")
        self._model = settings.served_model
        self._clients: dict[asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, asyncio.Semaphore]] = {}

    @property
    def name(self) -> str:
        return self._model or "openai"

    @property
    def url(self) -> str:
        return self._base

    def resolve_model(self) -> str | None:
        """Ask the server which model it serves, when the config names none (blocking; at start-up). A server
        that is not up yet is not an error: the first request asks again."""
        if self._model is None:
            try:
                self._model = self._first_model(self._get_models_blocking())
            except (OSError, ValueError, RemoteLLMError) as error:
                logger.warning("LLM server %s: cannot list its models yet: %s", self._base, error)
        return self._model

    async def reason(self, request: ReasoningRequest) -> ReasoningResult:
        """The server's answer, parsed strictly: RemoteLLMError when it gives none, LLMOutputError when it is
        not a valid emotion answer (not retried: the same prompt would get the same greedy answer)."""
        session, slots = self._client()
        self.stats.requests += 1
        async with slots:
            try:
                model = self._model or self._first_model(await self._call(session, "GET", "/models"))
                self._model = model
                reply = await self._call(session, "POST", "/chat/completions", self._body(request, model))
                text = reply["choices"][0]["message"]["content"]
                if not isinstance(text, str):
                    raise RemoteLLMError(f"{self._base}: answer without text content")
                return parse_generated_answer(text, model)
            except (LLMOutputError, RemoteLLMError):
                self.stats.failures += 1
                raise
            except (KeyError, IndexError, TypeError, ValueError) as error:
                self.stats.failures += 1
                raise RemoteLLMError(f"{self._base}: malformed chat completion ({error!r})") from error

    async def close_loop(self) -> None:
        """Close the client of the running event loop (call before that loop ends)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client[0].close()

    # -- internals

    def _body(self, request: ReasoningRequest, model: str) -> dict[str, Any]:
        user = json_user_message(request.clues_text, request.transcript, request.candidates)
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}],
            "temperature": 0,
            "max_tokens": self.settings.answer_tokens,
        }
        schema = answer_schema()
        if self.settings.response_format == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "emotion_answer", "schema": schema, "strict": True},
            }
        elif self.settings.response_format == "json_object":
            body["response_format"] = {"type": "json_object", "schema": schema}
        return body

    async def _call(
        self, session: aiohttp.ClientSession, method: str, path: str, body: dict[str, Any] | None = None
    ) -> Any:
        """One API call with retries and exponential back-off; its JSON reply, or RemoteLLMError."""
        settings = self.settings
        last = ""
        for attempt in range(settings.retries + 1):
            if attempt:
                self.stats.retries += 1
                await asyncio.sleep(settings.retry_backoff_s * 2 ** (attempt - 1))
            self.stats.attempts += 1
            try:
                async with session.request(method, self._base + path, json=body) as response:
                    if response.status == 200:
                        return await response.json(content_type=None)
                    last = f"HTTP {response.status}: {(await response.text())[:200]}"
                    if response.status not in RETRY_STATUSES:
                        break  # the request itself is wrong: asking again cannot help
            except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as error:
                last = repr(error) or type(error).__name__
            logger.warning("LLM server %s%s, attempt %d: %s", self._base, path, attempt + 1, last)
        raise RemoteLLMError(f"{self._base}{path} gave no answer: {last}")

    def _client(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        for old in [other for other in self._clients if other.is_closed()]:
            del self._clients[old]  # e.g. `microemo eval` runs one loop per clip
        if loop not in self._clients:
            headers = {"Authorization": f"Bearer {self.settings.token}"} if self.settings.token else {}
            session = aiohttp.ClientSession(
                headers=headers, timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s)
            )
            self._clients[loop] = (session, asyncio.Semaphore(self.settings.max_concurrency))
        return self._clients[loop]

    def _get_models_blocking(self) -> Any:
        request = urllib.request.Request(self._base + "/models")
        if self.settings.token:
            request.add_header("Authorization", f"Bearer {self.settings.token}")
        with urllib.request.urlopen(request, timeout=min(self.settings.timeout_s, 5.0)) as response:
            return json.loads(response.read())

    @staticmethod
    def _first_model(listing: Any) -> str:
        try:
            return str(listing["data"][0]["id"])
        except (KeyError, IndexError, TypeError) as error:
            raise RemoteLLMError(f"the server lists no model: {str(listing)[:200]}") from error
