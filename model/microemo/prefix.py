"""Visual prefix of the LLM stage: a trained checkpoint turns each utterance's clip into soft-prompt tokens."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from model.microemo.clip import ClipFeatures, check_sizes, encoder_batch
from model.microemo.encoder import EncoderConfig, GlobalLocalEncoder
from model.microemo.qformer import IncrementalQFormerCache, VideoQFormer, load_checkpoint


def utterance_tokens(
    encoder: GlobalLocalEncoder,
    cache: IncrementalQFormerCache,
    utterances: Sequence[ClipFeatures],
    device: torch.device,
) -> Tensor:
    """A call's next utterances, in order → (N, Q + Qc, H) tokens for the LLM; the cache now includes them.

    The one path from clips to LLM tokens: serving runs it per utterance under inference_mode, training runs
    whole calls with gradients, so training optimises exactly what serving computes.
    """
    check_sizes(utterances, encoder.cfg)
    encoded = encoder(**encoder_batch(utterances, device))  # tokens (N, T*, Ce), mask (N, T*)
    return torch.cat(
        [
            cache.add_utterance(encoded.tokens[i : i + 1], encoded.mask[i : i + 1])
            for i in range(len(utterances))
        ]
    )  # (N, Q + Qc, H)


class ProjectorMismatchError(ValueError):
    """A projector checkpoint that cannot serve the configured LLM, or one without its encoder."""


class PrefixEncoder:
    """Encoder + utterance/call Q-Formers + projector of one checkpoint, in eval mode, shared by every call.

    Each call keeps its own IncrementalQFormerCache (`new_cache`); `tokens` encodes only the new utterance's
    clip and updates that cache. Not thread-safe per cache: feed one call's utterances in order, one at a time.
    """

    def __init__(self, encoder: GlobalLocalEncoder, qformer: VideoQFormer, device: torch.device) -> None:
        if encoder.cfg.n_embd != qformer.cfg.encoder_dim:
            raise ProjectorMismatchError(
                f"encoder n_embd {encoder.cfg.n_embd} != qformer encoder_dim {qformer.cfg.encoder_dim}"
            )
        self.encoder = encoder.to(device).eval()
        self.qformer = qformer.to(device).eval()
        self.device = device

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "cpu", llm_hidden_size: int | None = None
    ) -> PrefixEncoder:
        """Loads a `microemo train` (or save_checkpoint) file; checks it projects to the LLM's hidden size."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"projector checkpoint not found: {path}")
        device = torch.device(device)
        checkpoint = load_checkpoint(path, map_location=device)
        encoder, qformer = checkpoint.encoder, checkpoint.qformer
        if encoder is None:
            raise ProjectorMismatchError(f"{path} holds no visual encoder; the live LLM stage needs one")
        width = qformer.cfg.llm_hidden_size
        if llm_hidden_size is not None and width != llm_hidden_size:
            raise ProjectorMismatchError(
                f"{path} projects to hidden size {width} (llm_hidden_size), but the configured LLM's hidden "
                f"size is {llm_hidden_size}; train the projector on this LLM"
            )
        return cls(encoder, qformer, device)

    @property
    def encoder_config(self) -> EncoderConfig:
        return self.encoder.cfg

    @property
    def hidden_size(self) -> int:
        return self.qformer.cfg.llm_hidden_size

    def new_cache(self) -> IncrementalQFormerCache:
        """A call's state: empty until its first utterance."""
        return IncrementalQFormerCache(self.qformer)

    @torch.inference_mode()
    def tokens(self, cache: IncrementalQFormerCache, features: ClipFeatures) -> Tensor:
        """One utterance's clip → (Q + Qc, H) tokens for the LLM; the call's cache now includes it."""
        return utterance_tokens(self.encoder, cache, [features], self.device)[0]
