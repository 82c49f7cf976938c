"""What the LLM is asked and how its answers are read: prompts, the strict JSON answer, explanation sentences."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model.llm.messages import LLMOutputError, ReasoningResult

Mode = Literal["rank", "generate"]  # rank the candidates as continuations, or write a JSON answer

SYSTEM_PROMPT = (
    "You analyse how the speaker in a video call feels, from the clues seen in their face, heard in their "
    "voice and said in their words."
)
RANK_ANSWER_PREFIX = "The speaker feels"  # candidates are scored as its continuation " <label>"
EXPLANATION_BRIDGE = ", because"
JSON_ANSWER_PREFIX = '{"labels": ["'  # seeding the answer keeps models on the JSON track

CONTENT_FREE = "N/A"  # clues and transcript of the calibration prompt


def rank_user_message(clues_text: str, transcript: str) -> str:
    # The candidates are not listed here: listed, SmolLM2-135M favoured labels by their place in the list.
    return f'Clues: {clues_text}\nTranscript: "{transcript}"\nWhich emotion does the speaker feel?'


def json_user_message(clues_text: str, transcript: str, candidates: Sequence[str]) -> str:
    suggestions = (
        f"Suggestions (other words are allowed): {', '.join(candidates)}.\n" if candidates else ""
    )  # serving always has candidates; a training example may have none
    return (
        f"Clues: {clues_text}\n"
        f'Transcript: "{transcript}"\n'
        f"Which emotions does the speaker feel? {suggestions}"
        'Answer only with JSON: {"labels": [up to three emotion words, strongest first], '
        '"valence": number from -1 (unpleasant) to 1 (pleasant), "arousal": number from -1 (calm) to 1 (excited), '
        '"explanation": "one short sentence citing the clues"}'
    )


def user_message(mode: Mode, clues_text: str, transcript: str, candidates: Sequence[str] = ()) -> str:
    """What the user turn says in each mode; serving and training both ask through this."""
    if mode == "rank":
        return rank_user_message(clues_text, transcript)
    return json_user_message(clues_text, transcript, candidates)


def answer_prefix(mode: Mode) -> str:
    """Where the assistant's answer starts: the LM continues it (rank: with a label; generate: with JSON)."""
    return RANK_ANSWER_PREFIX if mode == "rank" else JSON_ANSWER_PREFIX


def text_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def chat_prompt_ids(tokenizer: Any, user: str, prefix: str) -> list[int]:
    """Prompt tokens up to and including the start of the assistant's answer (system turn, user turn, prefix)."""
    if tokenizer.chat_template:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
        encoded = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        head = list(encoded["input_ids"])
    else:
        head = list(tokenizer(f"{SYSTEM_PROMPT}\n\n{user}\n\n").input_ids)
    return head + text_ids(tokenizer, prefix)


def prompt_ids(
    tokenizer: Any, mode: Mode, clues_text: str, transcript: str, candidates: Sequence[str] = ()
) -> list[int]:
    """The whole prompt of an utterance, up to where its answer starts: what serving asks, what training feeds."""
    return chat_prompt_ids(
        tokenizer, user_message(mode, clues_text, transcript, candidates), answer_prefix(mode)
    )


def answer_text(
    mode: Mode,
    labels: Sequence[str],
    valence: float | None = None,
    arousal: float | None = None,
    explanation: str = "",
) -> str:
    """The continuation of answer_prefix(mode) that serving reads as this answer (what training teaches).

    rank: " <label>, because <explanation>" (the label is what ranking scores; the rest what explain writes);
    generate: the rest of the strict JSON answer. Valence and arousal are left out when not known.
    """
    if not labels:
        raise ValueError("an answer needs at least one label")
    explanation = explanation.strip()
    if mode == "rank":
        if not explanation:
            return f" {labels[0]}."
        reason = explanation[0].lower() + explanation[1:]
        return f" {labels[0]}{EXPLANATION_BRIDGE} {reason}" + ("" if reason[-1] in ".!?" else ".")
    answer: dict[str, Any] = {"labels": list(labels)}
    if valence is not None and arousal is not None:
        answer |= {"valence": round(valence, 2), "arousal": round(arousal, 2)}
    answer["explanation"] = explanation
    text = json.dumps(answer)
    assert text.startswith(JSON_ANSWER_PREFIX)  # json.dumps writes '{"labels": ["' first
    return text[len(JSON_ANSWER_PREFIX) :]


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
