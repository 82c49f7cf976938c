"""LLM stage: refines an utterance's clues into open-vocabulary emotion labels with an explanation, batched across calls.

One job a module: `loading` (settings, finding and loading a causal LM), `messages` (request, result, the
reasoner protocol), `prompts` (what the LM is asked, how its answers are read), `reasoner` (the LM ranking
labels or writing JSON), `batcher` (requests of all calls gathered into batches), `remote` (a shared OpenAI-compatible
inference server instead of a local model). Callers import from here.
"""

from model.llm.batcher import BatcherClosedError, BatcherStats, MicroBatcher
from model.llm.loading import (
    SMOLLM2_GGUF,
    SMOLLM2_PACKAGE,
    LLMModelNotFoundError,
    load_causal_lm,
    model_files,
    packaged_smollm2,
    resolve_device,
    resolve_dtype,
)
from model.llm.messages import EmotionReasoner, LLMOutputError, ReasoningRequest, ReasoningResult
from model.llm.prompts import (
    CONTENT_FREE,
    EXPLANATION_BRIDGE,
    JSON_ANSWER_PREFIX,
    RANK_ANSWER_PREFIX,
    SENTENCE_ENDS,
    SYSTEM_PROMPT,
    GeneratedAnswer,
    Mode,
    affect_of_top_labels,
    answer_prefix,
    answer_text,
    chat_prompt_ids,
    first_sentence,
    json_user_message,
    parse_generated_answer,
    prompt_ids,
    rank_user_message,
    text_ids,
    user_message,
)
from model.llm.reasoner import (
    MAX_PRIOR_LABELS,
    LLMReasoner,
    count_until_end,
    left_pad,
    positions_of,
    right_pad,
)
from model.llm.remote import RemoteLLMError, RemoteReasoner, RemoteStats, answer_schema

__all__ = [
    "CONTENT_FREE",
    "EXPLANATION_BRIDGE",
    "JSON_ANSWER_PREFIX",
    "MAX_PRIOR_LABELS",
    "RANK_ANSWER_PREFIX",
    "SENTENCE_ENDS",
    "SMOLLM2_GGUF",
    "SMOLLM2_PACKAGE",
    "SYSTEM_PROMPT",
    "BatcherClosedError",
    "BatcherStats",
    "EmotionReasoner",
    "GeneratedAnswer",
    "LLMModelNotFoundError",
    "LLMOutputError",
    "LLMReasoner",
    "MicroBatcher",
    "Mode",
    "ReasoningRequest",
    "ReasoningResult",
    "RemoteLLMError",
    "RemoteReasoner",
    "RemoteStats",
    "affect_of_top_labels",
    "answer_prefix",
    "answer_schema",
    "answer_text",
    "chat_prompt_ids",
    "count_until_end",
    "first_sentence",
    "json_user_message",
    "left_pad",
    "load_causal_lm",
    "model_files",
    "packaged_smollm2",
    "parse_generated_answer",
    "positions_of",
    "prompt_ids",
    "rank_user_message",
    "resolve_device",
    "resolve_dtype",
    "right_pad",
    "text_ids",
    "user_message",
]
