"""Utterance-aware video Q-Former: utterance and call query tokens, incremental call cache, checkpoints."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import torch
import torch.nn as nn
from torch import Tensor

from model.microemo.encoder import Block, EncoderConfig, GlobalLocalEncoder, check_shape


@dataclass(frozen=True)
class QFormerConfig:
    encoder_dim: int = 256  # width of the encoder tokens the utterance queries cross-attend to
    n_embd: int = 256  # width C of query tokens
    n_head: int = 4
    n_layer: int = 4  # utterance Q-Former layers
    cross_attention_frequency: int = 2  # cross-attention in layers 0, f, 2f, ... (as Blip2QFormer)
    num_queries: int = 16  # Q utterance tokens per closed utterance
    call_n_layer: int = 2  # call Q-Former layers (same cross_attention_frequency)
    call_num_queries: int = 8  # Qc whole-call tokens
    max_cached_utterances: int = 8  # K newest utterances the call Q-Former sees token for token
    summary_decays: tuple[float, ...] = (0.5, 0.9, 1.0)  # older utterances pooled per time scale; 1.0 = mean
    mlp_ratio: int = 4
    dropout: float = 0.0
    llm_hidden_size: int = 576  # SmolLM2-135M, the default LLM
    projector: Literal["linear", "mlp"] = "mlp"

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.max_cached_utterances < 1 or self.cross_attention_frequency < 1:
            raise ValueError("max_cached_utterances and cross_attention_frequency must be at least 1")
        if not all(0.0 < d <= 1.0 for d in self.summary_decays):
            raise ValueError(f"summary_decays must lie in (0, 1], got {self.summary_decays}")


class QFormer(nn.Module):
    """Learned queries: self-attention in every layer, cross-attention into a memory every Nth (as BLIP-2)."""

    def __init__(self, cfg: QFormerConfig, num_queries: int, n_layer: int, memory_dim: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(0.02 * torch.randn(num_queries, cfg.n_embd))
        self.blocks = nn.ModuleList(
            Block(
                cfg.n_embd,
                cfg.n_head,
                cfg.mlp_ratio,
                cfg.dropout,
                cross_dim=memory_dim if i % cfg.cross_attention_frequency == 0 else None,
            )
            for i in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(cfg.n_embd)

    def forward(self, memory: Tensor, memory_mask: Tensor | None = None) -> Tensor:
        B, S, _ = memory.shape  # memory (B, S, memory_dim), memory_mask (B, S) bool, True = attend
        x = self.queries.expand(B, -1, -1)  # (B, Q, C)
        if memory_mask is not None:
            check_shape("memory_mask", memory_mask, (B, S))
        allowed = None if memory_mask is None else memory_mask[:, None, :].expand(B, x.shape[1], S)
        for block in self.blocks:
            x = block(x, memory=memory, memory_allowed=allowed)
        return self.ln_f(x)  # (B, Q, C)


class LLMProjector(nn.Module):
    """Q-Former tokens to the LLM's hidden size: one linear layer, or two with a GELU between (LLaVA-1.5)."""

    def __init__(self, in_dim: int, llm_hidden_size: int, kind: Literal["linear", "mlp"] = "mlp") -> None:
        super().__init__()
        if kind == "linear":
            self.net: nn.Module = nn.Linear(in_dim, llm_hidden_size)
        elif kind == "mlp":
            self.net = nn.Sequential(
                nn.Linear(in_dim, llm_hidden_size), nn.GELU(), nn.Linear(llm_hidden_size, llm_hidden_size)
            )
        else:
            raise ValueError(f"unknown projector {kind!r}; expected 'linear' or 'mlp'")

    def forward(self, tokens: Tensor) -> Tensor:  # (B, L, in_dim) -> (B, L, llm_hidden_size)
        return self.net(tokens)


# The call Q-Former's memory is multi-scale and bounded: the K newest utterances at full resolution (Q tokens
# each), and every older one folded into S decay-weighted means, one per entry of summary_decays (Q tokens
# each; query i means the same in every utterance, so averaging slot by slot keeps it). Decays 0.5, 0.9 and
# 1.0 weigh roughly the last 2, the last 10 and all evicted utterances. At most (K + S)·Q tokens, so an update
# costs the same at utterance 10 or 10,000; the fold is a linear recurrence in float64, so the cache equals
# the closed-form recompute over the whole history (pool_evicted) to float32 precision.


class CallContext(NamedTuple):
    """What the call Q-Former reads: the newest utterances as they are, older ones pooled per time scale."""

    recent: Tensor  # (B, k, Q, C) newest first, k = min(utterances so far, K)
    summaries: Tensor | None  # (B, S, Q, C) decay-weighted means of evicted utterances; None until one is


def fold_evicted(sums: Tensor, weights: Tensor, evicted: Tensor, decays: Tensor) -> tuple[Tensor, Tensor]:
    """One more evicted utterance (B, Q, C) into the running sums (S, B, Q, C) and weights (S,), float64."""
    return decays[:, None, None, None] * sums + evicted.double(), decays * weights + 1.0


def pool_evicted(evicted: Tensor, decays: Tensor) -> tuple[Tensor, Tensor]:
    """Closed form of folding (B, M, Q, C), oldest first: Σ_i d^age_i · u_i and Σ_i d^age_i per decay d."""
    ages = torch.arange(evicted.shape[1] - 1, -1, -1, dtype=torch.float64)  # (M,) 0 for the newest
    w = decays[:, None] ** ages  # (S, M)
    return torch.einsum("sm,bmqc->sbqc", w, evicted.double()), w.sum(dim=1)


def call_context(recent: Tensor, pooled: tuple[Tensor, Tensor] | None) -> CallContext:
    """(B, k, Q, C) newest first + running sums and weights → call Q-Former input, for cache and recompute."""
    if pooled is None:
        return CallContext(recent, None)
    sums, weights = pooled  # (S, B, Q, C), (S,) float64
    summaries = (sums / weights[:, None, None, None]).to(recent.dtype).transpose(0, 1)  # (B, S, Q, C)
    return CallContext(recent, summaries)


class VideoQFormer(nn.Module):
    """Utterance Q-Former over one segment, call Q-Former over the call's context, projector to the LLM."""

    def __init__(self, cfg: QFormerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.utterance_qformer = QFormer(cfg, cfg.num_queries, cfg.n_layer, cfg.encoder_dim)
        self.call_qformer = QFormer(cfg, cfg.call_num_queries, cfg.call_n_layer, cfg.n_embd)
        # Where a call-memory token comes from: how many utterances ago, or which summary time scale
        self.recent_pos = nn.Parameter(0.02 * torch.randn(cfg.max_cached_utterances, cfg.n_embd))
        self.summary_pos = nn.Parameter(0.02 * torch.randn(len(cfg.summary_decays), cfg.n_embd))
        self.projector = LLMProjector(cfg.n_embd, cfg.llm_hidden_size, cfg.projector)

    def summary_decays(self, device: torch.device) -> Tensor:  # (S,) float64, not a buffer that .half() casts
        return torch.tensor(self.cfg.summary_decays, dtype=torch.float64, device=device)

    def encode_utterance(self, encoder_tokens: Tensor, encoder_mask: Tensor | None = None) -> Tensor:
        return self.utterance_qformer(encoder_tokens, encoder_mask)  # (B, T*, Ce), (B, T*) bool -> (B, Q, C)

    def encode_call(self, context: CallContext) -> Tensor:  # -> (B, Qc, C)
        k = context.recent.shape[1]
        parts = [context.recent + self.recent_pos[:k, None]]  # (B, k, Q, C)
        if context.summaries is not None:
            parts.append(context.summaries + self.summary_pos[:, None])  # (B, S, Q, C)
        return self.call_qformer(torch.cat(parts, dim=1).flatten(1, 2))  # memory (B, (k + S)·Q, C)

    def tokens_for_llm(self, utterance: Tensor, call: Tensor) -> Tensor:  # (B, Q, C), (B, Qc, C)
        return self.projector(torch.cat([utterance, call], dim=1))  # (B, Q + Qc, llm_hidden_size)

    def context_from_history(self, history: Tensor) -> CallContext:
        """Full recompute from every utterance's tokens so far, (B, N, Q, C) oldest first."""
        K, N = self.cfg.max_cached_utterances, history.shape[1]
        recent = history[:, -K:].flip(1)  # (B, min(N, K), Q, C) newest first
        if N <= K:
            return call_context(recent, None)
        return call_context(recent, pool_evicted(history[:, : N - K], self.summary_decays(history.device)))

    def forward(self, history: Tensor) -> Tensor:  # (B, N, Q, C) -> (B, Q + Qc, llm_hidden_size)
        """Tokens for the LLM at the newest utterance of a call, recomputed from its whole history."""
        return self.tokens_for_llm(history[:, -1], self.encode_call(self.context_from_history(history)))


class IncrementalQFormerCache:
    """One call's state: the K newest utterance tokens and fixed-size decayed sums of all older ones."""

    def __init__(self, model: VideoQFormer) -> None:
        self.model = model  # in eval mode, so that dropout does not make the cache differ from a recompute
        self.recent: deque[Tensor] = deque()  # up to K tensors (B, Q, C), oldest first
        self.pooled: tuple[Tensor, Tensor] | None = None  # (S, B, Q, C), (S,) float64, once one is evicted
        self.num_utterances = 0

    def add_utterance(self, encoder_tokens: Tensor, encoder_mask: Tensor | None = None) -> Tensor:
        """Encodes only this segment, (B, T*, Ce) + (B, T*) bool; returns [utterance; call] (B, Q + Qc, H).

        Runs in the caller's grad mode: serving calls it under inference_mode (model.microemo.prefix), training with
        gradients, so that every parameter serving uses is trained through this very code.
        """
        utterance = self.model.encode_utterance(encoder_tokens, encoder_mask)  # (B, Q, C)
        if len(self.recent) == self.model.cfg.max_cached_utterances:
            self._evict(self.recent.popleft())
        self.recent.append(utterance)
        self.num_utterances += 1
        recent = torch.stack(tuple(reversed(self.recent)), dim=1)  # (B, k, Q, C) newest first
        call = self.model.encode_call(call_context(recent, self.pooled))  # (B, Qc, C)
        return self.model.tokens_for_llm(utterance, call)

    def _evict(self, utterance: Tensor) -> None:  # (B, Q, C)
        decays = self.model.summary_decays(utterance.device)
        if self.pooled is None:
            zeros = torch.zeros(len(decays), *utterance.shape, dtype=torch.float64, device=utterance.device)
            self.pooled = (zeros, torch.zeros_like(decays))
        # float64 sums: a whole-call mean over thousands of utterances stays as exact as a recompute
        self.pooled = fold_evicted(*self.pooled, utterance, decays)

    def fork(self) -> IncrementalQFormerCache:
        """An independent copy of this call's state over the same model (no tensor is changed in place)."""
        twin = IncrementalQFormerCache(self.model)
        twin.recent, twin.pooled, twin.num_utterances = deque(self.recent), self.pooled, self.num_utterances
        return twin


class Checkpoint(NamedTuple):
    qformer: VideoQFormer
    encoder: GlobalLocalEncoder | None


CHECKPOINT_FORMAT = 1
ConfigT = TypeVar("ConfigT", EncoderConfig, QFormerConfig)


def save_checkpoint(
    path: str | Path, qformer: VideoQFormer, encoder: GlobalLocalEncoder | None = None
) -> None:
    """Writes configs as plain dicts beside the state dicts, so a checkpoint loads without pickled classes."""
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "qformer_config": asdict(qformer.cfg),
        "qformer": qformer.state_dict(),
    }
    if encoder is not None:
        if encoder.cfg.n_embd != qformer.cfg.encoder_dim:
            raise ValueError(
                f"encoder n_embd {encoder.cfg.n_embd} != qformer encoder_dim {qformer.cfg.encoder_dim}"
            )
        payload |= {"encoder_config": asdict(encoder.cfg), "encoder": encoder.state_dict()}
    torch.save(payload, Path(path))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Modules come back in eval mode (call .train() to fine-tune); weights_only, so no code runs on load."""
    payload = torch.load(Path(path), map_location=map_location, weights_only=True)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {payload.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    qformer = VideoQFormer(config_from_dict(QFormerConfig, payload["qformer_config"], path))
    qformer.load_state_dict(payload["qformer"])
    encoder = None
    if "encoder" in payload:
        encoder = GlobalLocalEncoder(config_from_dict(EncoderConfig, payload["encoder_config"], path))
        encoder.load_state_dict(payload["encoder"])
        encoder.eval()
    return Checkpoint(qformer.eval(), encoder)


def config_from_dict(cls: type[ConfigT], values: dict[str, Any], path: str | Path) -> ConfigT:
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"{path}: unknown {cls.__name__} keys {unknown}")
    return cls(**values)
