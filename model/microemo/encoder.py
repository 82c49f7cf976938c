"""Global-local attention visual encoder: face-crop tokens over time attend into timestamped frame tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class EncoderConfig:
    n_embd: int = 256  # width C of every encoder token
    n_head: int = 4
    n_layer: int = 2  # global-local blocks after the backbones
    backbone: Literal["conv", "patch"] = "conv"  # same kind for frames and face crops, separate weights
    conv_channels: tuple[int, ...] = (32, 64, 128, 256)  # "conv": one stride-2 3x3 conv per entry
    patch_size: int = 16  # "patch": a tiny ViT, patch embedding + backbone_layers self-attention blocks
    backbone_layers: int = 1
    frame_size: int = 224  # whole frames arrive as (3, frame_size, frame_size), resized by the caller
    crop_size: int = 112  # aligned face crops arrive as (3, crop_size, crop_size)
    frame_grid: int = 2  # each frame pools to frame_grid² global tokens
    face_grid: int = 2  # each face crop pools to face_grid² local tokens (eyes, mouth, ... regions)
    time_embed_dim: int = 64  # sinusoids of the time since the segment's first frame
    time_min_period_s: float = 0.05  # micro-expressions last 1/25 to 1/5 s
    time_max_period_s: float = 60.0
    mlp_ratio: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        sizes_fit = self.frame_size % self.patch_size == 0 and self.crop_size % self.patch_size == 0
        if self.backbone == "patch" and not sizes_fit:
            raise ValueError(f"frame_size and crop_size must be multiples of patch_size {self.patch_size}")


class Attention(nn.Module):
    """Multi-head attention of x over kv (self-attention when kv is x); `allowed` (B, L, S) masks keys."""

    def __init__(self, dim: int, n_head: int, kv_dim: int, dropout: float) -> None:
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, kv: Tensor, allowed: Tensor | None = None) -> Tensor:
        B, L, C = x.shape  # x (B, L, C), kv (B, S, kv_dim)
        S, h = kv.shape[1], self.n_head
        q = self.q(x).view(B, L, h, C // h).transpose(1, 2)  # (B, h, L, hs)
        k, v = (t.view(B, S, h, C // h).transpose(1, 2) for t in self.kv(kv).split(C, dim=2))  # (B, h, S, hs)
        mask = None if allowed is None else allowed[:, None]  # (B, 1, L, S)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, h, L, hs)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, L, C)))


class MLP(nn.Module):
    def __init__(self, dim: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, mlp_ratio * dim)
        self.proj = nn.Linear(mlp_ratio * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer layer: self-attention, cross-attention into a memory if cross_dim is set, MLP."""

    def __init__(self, dim: int, n_head: int, mlp_ratio: int, dropout: float, cross_dim: int | None = None):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, n_head, dim, dropout)
        self.has_cross_attention = cross_dim is not None
        if cross_dim is not None:
            self.ln_cross = nn.LayerNorm(dim)
            self.ln_memory = nn.LayerNorm(cross_dim)
            self.cross_attn = Attention(dim, n_head, cross_dim, dropout)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)

    def forward(
        self,
        x: Tensor,  # (B, L, C)
        self_allowed: Tensor | None = None,  # (B, L, L) bool
        memory: Tensor | None = None,  # (B, S, cross_dim)
        memory_allowed: Tensor | None = None,  # (B, L, S) bool
    ) -> Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, self_allowed)
        if self.has_cross_attention and memory is not None:
            x = x + self.cross_attn(self.ln_cross(x), self.ln_memory(memory), memory_allowed)
        return x + self.mlp(self.ln_2(x))


def check_shape(name: str, tensor: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {shape}")


def self_attention_mask(valid: Tensor) -> Tensor:
    """(B, L) bool → (B, L, L): attend to valid keys, and always to yourself so no row is empty (no NaN)."""
    eye = torch.eye(valid.shape[1], dtype=torch.bool, device=valid.device)
    return valid[:, None, :] | eye


class ConvBackbone(nn.Module):
    """Stride-2 3x3 convolutions, then average pooling of the feature map to grid×grid tokens."""

    def __init__(self, channels: tuple[int, ...], dim: int, grid: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GELU()]
            c_in = c
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c_in, dim, 1)
        self.pool = nn.AdaptiveAvgPool2d(grid)

    def forward(self, images: Tensor) -> Tensor:  # (N, 3, H, W) in [0, 1] -> (N, grid², C)
        x = self.pool(self.proj(self.convs(images * 2 - 1)))  # (N, C, grid, grid)
        return x.flatten(2).transpose(1, 2)


class PatchBackbone(nn.Module):
    """Tiny ViT: patch embedding, learned positions, a few self-attention blocks, pooled to grid² tokens."""

    def __init__(self, cfg: EncoderConfig, image_size: int, grid: int) -> None:
        super().__init__()
        self.side = image_size // cfg.patch_size
        self.patch_embed = nn.Conv2d(3, cfg.n_embd, cfg.patch_size, stride=cfg.patch_size)
        self.pos = nn.Parameter(0.02 * torch.randn(self.side * self.side, cfg.n_embd))
        self.blocks = nn.ModuleList(
            Block(cfg.n_embd, cfg.n_head, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.backbone_layers)
        )
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.pool = nn.AdaptiveAvgPool2d(grid)

    def forward(self, images: Tensor) -> Tensor:  # (N, 3, H, W) in [0, 1] -> (N, grid², C)
        x = self.patch_embed(images * 2 - 1).flatten(2).transpose(1, 2) + self.pos  # (N, P, C)
        for block in self.blocks:
            x = block(x)
        N, P, C = x.shape
        x = self.ln_f(x).transpose(1, 2).reshape(N, C, self.side, self.side)
        return self.pool(x).flatten(2).transpose(1, 2)


def make_backbone(cfg: EncoderConfig, image_size: int, grid: int) -> nn.Module:
    if cfg.backbone == "conv":
        return ConvBackbone(cfg.conv_channels, cfg.n_embd, grid)
    if cfg.backbone == "patch":
        return PatchBackbone(cfg, image_size, grid)
    raise ValueError(f"unknown encoder backbone {cfg.backbone!r}; expected 'conv' or 'patch'")


class TimeEmbedding(nn.Module):
    """Sinusoids of a time in seconds at geometric periods, then a linear map: any sampling, even ragged."""

    periods: Tensor  # (time_embed_dim // 2,) seconds

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        lo, hi, n = math.log(cfg.time_min_period_s), math.log(cfg.time_max_period_s), cfg.time_embed_dim // 2
        self.register_buffer("periods", torch.exp(torch.linspace(lo, hi, n)), persistent=False)  # (n,)
        self.proj = nn.Linear(2 * n, cfg.n_embd)

    def forward(self, seconds: Tensor) -> Tensor:  # (B, T) float -> (B, T, C)
        angles = 2 * math.pi * seconds[..., None] / self.periods  # (B, T, n)
        return self.proj(torch.cat([angles.sin(), angles.cos()], dim=-1))


class EncoderOutput(NamedTuple):
    tokens: Tensor  # (B, T*, C) float32: T·frame_grid² global tokens, then T·face_grid² local tokens
    mask: Tensor  # (B, T*) bool: False for padded frames and missing faces; downstream attention skips them


class GlobalLocalEncoder(nn.Module):
    """Global tokens (whole frames + time) and local tokens (face crops + time) attending into the global."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C = cfg.n_embd
        self.frame_backbone = make_backbone(cfg, cfg.frame_size, cfg.frame_grid)
        self.face_backbone = make_backbone(cfg, cfg.crop_size, cfg.face_grid)
        self.time_embed = TimeEmbedding(cfg)
        self.frame_pos = nn.Parameter(0.02 * torch.randn(cfg.frame_grid**2, C))  # where in the frame
        self.face_pos = nn.Parameter(0.02 * torch.randn(cfg.face_grid**2, C))  # where in the face
        self.global_blocks = nn.ModuleList(
            Block(C, cfg.n_head, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.n_layer)
        )
        self.local_blocks = nn.ModuleList(
            Block(C, cfg.n_head, cfg.mlp_ratio, cfg.dropout, cross_dim=C) for _ in range(cfg.n_layer)
        )
        self.ln_f = nn.LayerNorm(C)

    def forward(
        self,
        frames: Tensor,  # (B, T, 3, frame_size, frame_size) float32 RGB in [0, 1]
        frame_times: Tensor,  # (B, T) float64 (or float32) media time in seconds; any spacing
        face_crops: Tensor,  # (B, T, 3, crop_size, crop_size) float32 RGB in [0, 1], aligned, one per frame
        face_mask: Tensor,  # (B, T) bool: True where a face was found in that frame
        frame_mask: Tensor | None = None,  # (B, T) bool: False for padding; each row needs one True
    ) -> EncoderOutput:
        B, T = frame_times.shape
        f, c = self.cfg.frame_size, self.cfg.crop_size
        check_shape("frames", frames, (B, T, 3, f, f))
        check_shape("face_crops", face_crops, (B, T, 3, c, c))
        check_shape("face_mask", face_mask, (B, T))
        frame_mask = torch.ones_like(face_mask, dtype=torch.bool) if frame_mask is None else frame_mask.bool()
        check_shape("frame_mask", frame_mask, (B, T))
        if not bool(frame_mask.any(dim=1).all()):
            raise ValueError("each segment needs at least one valid frame (a row of frame_mask is all False)")
        face_mask = face_mask.bool() & frame_mask
        # Time since the segment's first frame, subtracted before any cast: an utterance at minute 40 of a
        # call looks like one at minute 0, and float32 would blur milliseconds of a long call's media time.
        t0 = frame_times.masked_fill(~frame_mask, math.inf).amin(dim=1, keepdim=True)  # (B, 1)
        time = self.time_embed((frame_times - t0).float())[:, :, None]  # (B, T, 1, C)
        g = self.frame_backbone(frames.flatten(0, 1)).view(B, T, -1, self.cfg.n_embd)  # (B, T, Gg, C)
        loc = self.face_backbone(face_crops.flatten(0, 1)).view(B, T, -1, self.cfg.n_embd)  # (B, T, Gf, C)
        # No face: a blank token that attends only to itself and that nothing else attends to (masked out)
        loc = torch.where(face_mask[:, :, None, None], loc, 0.0)
        g = (g + self.frame_pos + time).flatten(1, 2)  # (B, T·Gg, C)
        loc = (loc + self.face_pos + time).flatten(1, 2)  # (B, T·Gf, C)
        g_valid = frame_mask.repeat_interleave(self.cfg.frame_grid**2, dim=1)  # (B, T·Gg)
        loc_valid = face_mask.repeat_interleave(self.cfg.face_grid**2, dim=1)  # (B, T·Gf)
        g_allowed, loc_allowed = self_attention_mask(g_valid), self_attention_mask(loc_valid)
        cross_allowed = g_valid[:, None, :].expand(B, loc.shape[1], -1)  # (B, T·Gf, T·Gg)
        for global_block, local_block in zip(self.global_blocks, self.local_blocks, strict=True):
            g = global_block(g, g_allowed)
            loc = local_block(loc, loc_allowed, memory=g, memory_allowed=cross_allowed)
        tokens = self.ln_f(torch.cat([g, loc], dim=1))  # (B, T*, C)
        return EncoderOutput(tokens, torch.cat([g_valid, loc_valid], dim=1))
