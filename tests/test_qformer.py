"""The video Q-Former: utterance and call tokens, the incremental call cache, the projector, checkpoints."""

import dataclasses
from pathlib import Path
from typing import Literal

import pytest
import torch

from model.microemo.encoder import EncoderConfig, GlobalLocalEncoder
from model.microemo.qformer import (
    IncrementalQFormerCache,
    LLMProjector,
    QFormerConfig,
    VideoQFormer,
    load_checkpoint,
    save_checkpoint,
)

TINY = QFormerConfig(
    encoder_dim=24,
    n_embd=32,
    n_head=2,
    n_layer=4,
    cross_attention_frequency=2,
    num_queries=4,
    call_n_layer=2,
    call_num_queries=3,
    max_cached_utterances=3,
    summary_decays=(0.5, 0.9, 1.0),
    llm_hidden_size=40,
)


def qformer(cfg: QFormerConfig = TINY) -> VideoQFormer:
    torch.manual_seed(0)
    return VideoQFormer(cfg).eval()


def utterance_segments(n: int, B: int = 1, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n closed utterances of different lengths: encoder tokens (B, T*, 24) and masks (B, T*)."""
    g = torch.Generator().manual_seed(seed)
    segments = []
    for _ in range(n):
        length = int(torch.randint(4, 20, (1,), generator=g))
        mask = torch.rand(B, length, generator=g) > 0.2
        mask[:, 0] = True
        segments.append((torch.randn(B, length, 24, generator=g), mask))
    return segments


def test_utterance_tokens_are_one_per_query() -> None:
    tokens, mask = utterance_segments(1, B=2)[0]
    assert qformer().encode_utterance(tokens, mask).shape == (2, 4, 32)


def test_cross_attention_every_nth_layer_as_blip2() -> None:
    model = qformer(dataclasses.replace(TINY, n_layer=5, cross_attention_frequency=2))
    assert [b.has_cross_attention for b in model.utterance_qformer.blocks] == [True, False, True, False, True]


def test_masked_encoder_tokens_are_ignored() -> None:
    model = qformer()
    tokens, mask = utterance_segments(1)[0]
    mask[0, 2] = False
    before = model.encode_utterance(tokens, mask)
    tokens[0, 2] = 100.0
    assert torch.allclose(model.encode_utterance(tokens, mask), before, atol=1e-6)


def test_llm_tokens_are_utterance_tokens_then_call_tokens() -> None:
    model = qformer()
    cache = IncrementalQFormerCache(model)
    tokens, mask = utterance_segments(1, B=2)[0]
    assert cache.add_utterance(tokens, mask).shape == (2, 4 + 3, 40)


def test_incremental_cache_equals_full_recompute_over_many_utterances() -> None:
    model = qformer()
    cache = IncrementalQFormerCache(model)
    segments = utterance_segments(12, B=2)  # 4 × K, so utterances are evicted and folded many times
    history = []
    with torch.no_grad():
        for tokens, mask in segments:
            incremental = cache.add_utterance(tokens, mask)
            history.append(model.encode_utterance(tokens, mask))
            full = model(torch.stack(history, dim=1))  # (B, n, Q, C) → (B, Q + Qc, H)
            assert torch.allclose(incremental, full, atol=1e-5), len(history)


def test_older_utterances_still_shape_the_call_tokens() -> None:
    model = qformer()
    with torch.no_grad():
        history = torch.stack([model.encode_utterance(*s) for s in utterance_segments(6)], dim=1)
        changed = history.clone()
        changed[:, 0] = torch.randn_like(changed[:, 0])  # older than the K = 3 kept at full resolution
        assert not torch.allclose(model(changed), model(history), atol=1e-4)


def test_cache_stays_bounded_as_the_call_grows() -> None:
    cache = IncrementalQFormerCache(qformer())
    sizes = []
    for tokens, mask in utterance_segments(20):
        cache.add_utterance(tokens, mask)
        pooled = 0 if cache.pooled is None else sum(t.numel() for t in cache.pooled)
        sizes.append(sum(t.numel() for t in cache.recent) + pooled)
    assert cache.num_utterances == 20 and len(cache.recent) == 3
    assert len(set(sizes[3:])) == 1  # from the first eviction on, the state has a fixed size


def test_forked_cache_is_independent() -> None:
    cache = IncrementalQFormerCache(qformer())
    segments = utterance_segments(6)
    for tokens, mask in segments[:4]:
        cache.add_utterance(tokens, mask)
    twin = cache.fork()
    assert torch.equal(twin.add_utterance(*segments[4]), cache.add_utterance(*segments[4]))
    twin.add_utterance(*segments[5])
    assert twin.num_utterances == 6 and cache.num_utterances == 5


def test_gradients_reach_every_parameter_and_the_encoder_tokens() -> None:
    model = qformer().train()
    segments = utterance_segments(5, B=2)  # more than K, so the summaries are used
    for tokens, _ in segments:
        tokens.requires_grad_()
    history = torch.stack([model.encode_utterance(t, m) for t, m in segments], dim=1)
    model(history).pow(2).mean().backward()
    without_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without_grad == []
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t, _ in segments)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_projector_maps_to_the_llm_hidden_size(kind: Literal["linear", "mlp"]) -> None:
    projector = LLMProjector(32, 40, kind)
    assert projector(torch.randn(2, 7, 32)).shape == (2, 7, 40)


def test_checkpoint_round_trip_restores_configs_weights_and_outputs(tmp_path: Path) -> None:
    model = qformer()
    torch.manual_seed(1)
    encoder_cfg = EncoderConfig(
        n_embd=24, n_head=2, n_layer=1, conv_channels=(8,), frame_size=16, crop_size=8
    )
    encoder = GlobalLocalEncoder(encoder_cfg)
    save_checkpoint(tmp_path / "visual.pt", model, encoder)
    loaded = load_checkpoint(tmp_path / "visual.pt")
    assert loaded.qformer.cfg == TINY and loaded.encoder is not None and loaded.encoder.cfg == encoder_cfg
    for original, restored in ((model, loaded.qformer), (encoder, loaded.encoder)):
        state = restored.state_dict()
        assert all(torch.equal(v, state[k]) for k, v in original.state_dict().items())
    history = torch.stack([model.encode_utterance(*s) for s in utterance_segments(4)], dim=1)
    assert torch.equal(loaded.qformer(history), model(history))


def test_checkpoint_with_an_unknown_config_key_is_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "q.pt", qformer())
    payload = torch.load(tmp_path / "q.pt", weights_only=True)
    payload["qformer_config"]["num_querys"] = 8
    torch.save(payload, tmp_path / "q.pt")
    with pytest.raises(ValueError, match="unknown QFormerConfig keys \\['num_querys'\\]"):
        load_checkpoint(tmp_path / "q.pt")
