"""What the LLM is asked and how its answers are read: prompts, the strict JSON answer, explanation sentences."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from model.llm.messages import LLMOutputError, ReasoningRequest, ReasoningResult

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
