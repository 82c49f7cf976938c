"""The global-local encoder: token layout, masks for missing faces and padding, time, gradients."""

import dataclasses
from typing import Literal

import pytest
import torch

from model.microemo.encoder import EncoderConfig, GlobalLocalEncoder

TINY = EncoderConfig(
    n_embd=32,
    n_head=2,
    n_layer=1,
    conv_channels=(8, 16),
    frame_size=32,
    crop_size=16,
    frame_grid=2,
    face_grid=1,
)


def segment(cfg: EncoderConfig, B: int = 2, T: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    times = torch.cumsum(0.1 + 0.3 * torch.rand(B, T, generator=g, dtype=torch.float64), dim=1)  # ragged
    return {
        "frames": torch.rand(B, T, 3, cfg.frame_size, cfg.frame_size, generator=g),
        "frame_times": 12.0 + times,
        "face_crops": torch.rand(B, T, 3, cfg.crop_size, cfg.crop_size, generator=g),
        "face_mask": torch.ones(B, T, dtype=torch.bool),
    }


def encoder(cfg: EncoderConfig = TINY) -> GlobalLocalEncoder:
    torch.manual_seed(0)
    return GlobalLocalEncoder(cfg).eval()


@pytest.mark.parametrize("backbone", ["conv", "patch"])
def test_tokens_are_frame_regions_then_face_regions_per_frame(backbone: Literal["conv", "patch"]) -> None:
    cfg = dataclasses.replace(TINY, backbone=backbone, patch_size=8)
    out = encoder(cfg)(**segment(cfg, B=2, T=5))
    assert out.tokens.shape == (2, 5 * (4 + 1), 32) and out.tokens.dtype == torch.float32
    assert out.mask.shape == (2, 25) and out.mask.dtype == torch.bool and bool(out.mask.all())


def test_missing_faces_are_masked_out_and_frames_are_kept() -> None:
    inputs = segment(TINY, B=1, T=5)
    inputs["face_mask"][0, [1, 3]] = False
    out = encoder()(**inputs)
    global_mask, local_mask = out.mask[0, :20], out.mask[0, 20:]
    assert bool(global_mask.all())
    assert local_mask.tolist() == [True, False, True, False, True]
    assert bool(torch.isfinite(out.tokens).all())


def test_no_face_at_all_still_gives_finite_tokens() -> None:
    inputs = segment(TINY, B=1, T=4)
    inputs["face_mask"][:] = False
    out = encoder()(**inputs)
    assert bool(torch.isfinite(out.tokens).all()) and not bool(out.mask[0, 16:].any())


def test_missing_face_crop_content_is_ignored() -> None:
    model, inputs = encoder(), segment(TINY, B=1, T=5)
    inputs["face_mask"][0, 2] = False
    before = model(**inputs).tokens
    inputs["face_crops"][0, 2] = torch.rand_like(inputs["face_crops"][0, 2])
    assert torch.equal(model(**inputs).tokens, before)


def test_padded_frames_do_not_change_the_valid_tokens() -> None:
    model, inputs = encoder(), segment(TINY, B=1, T=4)
    padded = segment(TINY, B=1, T=6, seed=1)
    for name in ("frames", "frame_times", "face_crops", "face_mask"):
        padded[name][:, :4] = inputs[name]
    frame_mask = torch.tensor([[True] * 4 + [False] * 2])
    out, out_padded = model(**inputs), model(**padded, frame_mask=frame_mask)
    valid = out_padded.mask[0]
    assert valid.sum() == out.mask[0].sum() == 4 * 4 + 4
    assert torch.allclose(out_padded.tokens[0, valid], out.tokens[0], atol=1e-5)


def test_only_time_since_the_segment_start_matters() -> None:
    model, inputs = encoder(), segment(TINY, B=1, T=5)
    shifted = {**inputs, "frame_times": inputs["frame_times"] + 3600.0}
    assert torch.allclose(model(**shifted).tokens, model(**inputs).tokens, atol=1e-5)


def test_irregular_timestamps_change_the_tokens() -> None:
    model, inputs = encoder(), segment(TINY, B=1, T=5)
    regular = {**inputs, "frame_times": torch.arange(5, dtype=torch.float64)[None] * 0.2}
    assert not torch.allclose(model(**regular).tokens, model(**inputs).tokens, atol=1e-3)


def random_readout(tokens: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A fixed random linear function of the tokens: a scalar whose gradient follows every token.

    Not their sum: every token ends in a LayerNorm, whose outputs sum to zero (and whose squares sum to about
    n_embd) whatever the inputs, so such a loss has no gradient beyond rounding noise.
    """
    g = torch.Generator().manual_seed(seed)
    return (tokens * torch.randn(tokens.shape, generator=g)).sum()


def test_local_tokens_attend_into_the_whole_frames() -> None:
    model, inputs = encoder(), segment(TINY, B=1, T=3)
    frames = inputs["frames"].requires_grad_()
    local_tokens = model(**inputs).tokens[:, 3 * 4 :]  # (1, 3·1, C): after the 3·4 global tokens
    random_readout(local_tokens).backward()
    # Local tokens see the frames only through cross-attention: without it, no gradient reaches the frames.
    assert frames.grad is not None
    assert frames.grad.abs().amax() > 1e-6  # about 2e-3 here; the old sum-of-tokens loss gave 1e-10


def test_gradients_reach_every_parameter() -> None:
    model = encoder().train()
    inputs = segment(TINY, B=2, T=3)
    inputs["face_mask"][0, 1] = False
    out = model(**inputs)
    random_readout(out.tokens[out.mask]).backward()
    without_grad = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().amax() > 1e-6
    ]
    assert without_grad == []


def test_wrong_crop_size_is_rejected_with_the_expected_shape() -> None:
    inputs = segment(TINY, B=1, T=2)
    inputs["face_crops"] = torch.rand(1, 2, 3, 20, 20)
    expected = r"face_crops has shape \(1, 2, 3, 20, 20\), expected \(1, 2, 3, 16, 16\)"
    with pytest.raises(ValueError, match=expected):
        encoder()(**inputs)
