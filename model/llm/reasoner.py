"""The reasoner: a causal LM ranks candidate labels (or writes a JSON answer) for a batch of utterances."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from model.llm.loading import load_causal_lm, model_files, resolve_device, resolve_dtype
from model.llm.messages import LLMOutputError, ReasoningRequest, ReasoningResult
from model.llm.prompts import (
    CONTENT_FREE,
    EXPLANATION_BRIDGE,
    JSON_ANSWER_PREFIX,
    RANK_ANSWER_PREFIX,
    SENTENCE_ENDS,
    affect_of_top_labels,
    first_sentence,
    parse_generated_answer,
    prompt_ids,
    text_ids,
)
from model.settings import LLMSettings

MAX_PRIOR_LABELS = 20_000


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

    def __init__(self, settings: LLMSettings, top_k: int = 3) -> None:
        """top_k: the labels an answer keeps (the stream passes emotion.top_k)."""
        folder, gguf_file = model_files(settings.model_path, settings.gguf_file)
        self.settings = settings
        self.top_k = top_k
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.tokenizer, self.model = load_causal_lm(folder, gguf_file, self.device, self.dtype)
        self.pad_id = self._pad_id()
        self.hidden_size = int(self.model.get_input_embeddings().weight.shape[1])
        self.tokens_generated = 0  # new tokens written by explanations and JSON answers, for metrics
        self._name = Path(gguf_file).stem if gguf_file else folder.name
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
        return prompt_ids(self.tokenizer, "rank", request.clues_text, request.transcript)

    # -- internals

    def _rank_and_explain(self, requests: Sequence[ReasoningRequest]) -> list[ReasoningResult | Exception]:
        rankings = self.rank(requests)
        tops = [sorted(range(len(p)), key=lambda i: -p[i])[: self.top_k] for p in rankings]
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
        prompts = [
            prompt_ids(self.tokenizer, "generate", r.clues_text, r.transcript, r.candidates) for r in requests
        ]
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
            prompt = self._prompt_embeds(prompt_ids(self.tokenizer, "rank", CONTENT_FREE, CONTENT_FREE))
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

    def _label_ids(self, label: str) -> list[int]:
        return self._text_ids(" " + label.strip())

    def _text_ids(self, text: str) -> list[int]:
        return text_ids(self.tokenizer, text)

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
