"""The segmenter on synthetic speech-probability sequences (32 ms chunks)."""

from __future__ import annotations

import numpy as np
import pytest

from model.audio.segmenter import ClosedUtterance, Segmenter, SpeechEnded, SpeechSoFar, SpeechStarted
from model.settings import VadSettings

CHUNK = 512
DT = CHUNK / 16_000  # 0.032 s


def run(probs: list[float], segmenter: Segmenter, flush: bool = False) -> list[object]:
    events: list[object] = []
    for i, p in enumerate(probs):
        samples = np.full(CHUNK, i, dtype=np.float32)  # sample value = chunk index, to check padding
        events += segmenter.push(i * DT, samples, p)
    if flush:
        events += segmenter.flush()
    return events


def seconds(s: float) -> int:
    return round(s / DT)


def utterances(events: list[object]) -> list[ClosedUtterance]:
    return [e for e in events if isinstance(e, ClosedUtterance)]


def test_utterance_closes_after_silence() -> None:
    probs = [0.0] * seconds(1) + [0.9] * seconds(1.5) + [0.05] * seconds(1)
    events = run(probs, Segmenter(VadSettings(min_silence_ms=500, speech_pad_ms=0)))
    (utt,) = utterances(events)
    assert utt.t0 == pytest.approx(1.0, abs=DT)
    assert utt.t1 == pytest.approx(2.5, abs=DT)
    assert utt.reason == "silence"
    # it closed once min_silence had passed, not at the end of the input
    close_index = events.index(utt)
    assert isinstance(events[close_index - 1], SpeechEnded)


def test_close_happens_exactly_after_min_silence() -> None:
    segmenter = Segmenter(VadSettings(min_silence_ms=500))
    speech_end = None
    for i, p in enumerate([0.9] * seconds(1) + [0.0] * seconds(2)):
        for event in segmenter.push(i * DT, np.zeros(CHUNK, np.float32), p):
            if isinstance(event, SpeechEnded):
                speech_end = (i + 1) * DT  # time at which the chunk that closed it ended
    assert speech_end is not None
    assert speech_end - 1.0 == pytest.approx(0.5, abs=DT)


def test_hysteresis_keeps_speech_open_between_thresholds() -> None:
    probs = [0.9] * seconds(0.5) + [0.4] * seconds(1) + [0.9] * seconds(0.5) + [0.0] * seconds(1)
    (utt,) = utterances(
        run(probs, Segmenter(VadSettings(threshold=0.5, neg_threshold=0.35, min_silence_ms=300)))
    )
    assert utt.t1 == pytest.approx(2.0, abs=DT)


def test_blips_shorter_than_min_speech_are_ignored() -> None:
    probs = ([0.0] * seconds(0.6) + [0.95] * 4) * 3 + [0.0] * seconds(1)  # 128 ms blips
    events = run(probs, Segmenter(VadSettings(min_speech_ms=250, min_silence_ms=300)))
    assert events == []


def test_speech_start_is_reported_once_min_speech_is_reached() -> None:
    segmenter = Segmenter(VadSettings(min_speech_ms=250))
    first_start_at = None
    for i, p in enumerate([0.0] * 10 + [0.9] * 20):
        if any(isinstance(e, SpeechStarted) for e in segmenter.push(i * DT, np.zeros(CHUNK, np.float32), p)):
            first_start_at = (i + 1) * DT
            break
    assert first_start_at is not None
    assert first_start_at - 10 * DT == pytest.approx(0.25, abs=DT)


def test_padding_adds_context_on_both_sides() -> None:
    probs = [0.0] * seconds(1) + [0.9] * seconds(1) + [0.0] * seconds(1)
    (utt,) = utterances(run(probs, Segmenter(VadSettings(speech_pad_ms=192, min_silence_ms=500))))
    assert utt.pcm_t0 == pytest.approx(utt.t0 - 0.192, abs=DT)
    assert len(utt.pcm) / 16_000 == pytest.approx(utt.t1 - utt.t0 + 2 * 0.192, abs=DT)
    # the samples are those of the right chunks: chunk index encoded in the sample value
    assert utt.pcm[0] == seconds(1) - round(0.192 / DT)


def test_long_speech_is_force_closed_and_continued() -> None:
    probs = [0.9] * seconds(5.2) + [0.0] * seconds(1)
    events = run(probs, Segmenter(VadSettings(max_utterance_s=2.0, min_silence_ms=300)))
    utts = utterances(events)
    assert [u.reason for u in utts] == ["max_length", "max_length", "silence"]
    assert all(u.t1 - u.t0 <= 2.0 + DT for u in utts)
    assert [u.continues for u in utts] == [None, 0, 1]
    assert sum(isinstance(e, SpeechStarted) for e in events) == 3
    assert utts[1].t0 == pytest.approx(utts[0].t1)


def test_flush_closes_speech_in_progress() -> None:
    probs = [0.0] * seconds(0.5) + [0.9] * seconds(1.0)
    events = run(probs, Segmenter(), flush=True)
    (utt,) = utterances(events)
    assert utt.reason == "flush"
    assert utt.t1 == pytest.approx(1.5, abs=DT)


def test_flush_drops_an_unconfirmed_blip() -> None:
    events = run([0.0] * 10 + [0.9] * 3, Segmenter(VadSettings(min_speech_ms=250)), flush=True)
    assert events == []


def test_idle_audio_is_not_kept_without_bound() -> None:
    segmenter = Segmenter(VadSettings(speech_pad_ms=200))
    run([0.0] * seconds(60), segmenter)
    assert segmenter._audio.end - segmenter._audio._start < 0.3


def test_speech_end_is_dated_where_probability_first_fell_under_threshold() -> None:
    # silero's probability trails off (0.45 is still "maybe speech") before it drops under neg_threshold
    probs = [0.9] * seconds(1) + [0.45, 0.45] + [0.05] * seconds(1)
    (utt,) = utterances(
        run(probs, Segmenter(VadSettings(threshold=0.5, neg_threshold=0.35, speech_pad_ms=0)))
    )
    assert utt.t1 == pytest.approx(1.0, abs=DT)


def push_audio(segmenter: Segmenter, audio: np.ndarray, probs: list[float]) -> tuple[ClosedUtterance, float]:
    """The closed utterance and the media time at which it closed."""
    for i, p in enumerate(probs):
        for event in segmenter.push(i * DT, audio[i * CHUNK : (i + 1) * CHUNK], p):
            if isinstance(event, ClosedUtterance):
                return event, (i + 1) * DT
    raise AssertionError("no utterance closed")


def test_speech_end_is_found_in_the_audio_when_the_vad_lags_it() -> None:
    # a tone from 1.0 to 2.5 s, then silence; the speech probability stays high 3 chunks past the sound
    rng = np.random.default_rng(0)
    t = np.arange(seconds(4) * CHUNK) / 16_000
    audio = np.where((t >= 1.0) & (t < 2.5), 0.3 * np.sin(2 * np.pi * 220 * t), 0.0).astype(np.float32)
    lagging = [0.0] * seconds(1) + [0.9] * (seconds(1.5) + 3) + [0.05] * seconds(1.5)
    vad_end = (seconds(1) + seconds(1.5) + 3) * DT
    quiet_noise = rng.normal(0, 0.3 * 10 ** (-40 / 20), len(audio)).astype(np.float32)  # 40 dB down
    for signal in (audio, audio + quiet_noise):
        utt, closed_at = push_audio(
            Segmenter(VadSettings(min_silence_ms=500, speech_pad_ms=0)), signal, lagging
        )
        assert utt.t1 == pytest.approx(2.5, abs=0.011)
        # it closed min_silence after the sound ended, not after the VAD noticed
        assert closed_at <= 2.5 + 0.5 + DT + 0.011 < vad_end + 0.5
    # a noise floor as loud as the speech hides its end: the VAD's end stands
    loud_noise = rng.normal(0, 0.3, len(audio)).astype(np.float32)
    utt, _ = push_audio(
        Segmenter(VadSettings(min_silence_ms=500, speech_pad_ms=0)), audio + loud_noise, lagging
    )
    assert utt.t1 == pytest.approx(vad_end, abs=0.001)


def test_a_pause_announces_the_utterance_it_would_close_with_the_same_audio() -> None:
    from model.audio.segmenter import SpeechPaused

    # speech, a 0.3 s pause (longer than the pad, shorter than min_silence), speech, then a real silence
    probs = [0.0] * 10 + [0.9] * 40 + [0.05] * 10 + [0.9] * 30 + [0.05] * 30
    events = run(probs, Segmenter(VadSettings(min_silence_ms=500, speech_pad_ms=200)))
    paused = [e.utterance for e in events if isinstance(e, SpeechPaused)]
    (closed,) = utterances(events)
    assert len(paused) == 2  # one per silence that outlasted the pad; the first never closed
    assert paused[0].t1 == pytest.approx(50 * DT) and paused[0].index == closed.index
    later = paused[1]
    assert (later.index, later.t0, later.t1, later.pcm_t0) == (
        closed.index,
        closed.t0,
        closed.t1,
        closed.pcm_t0,
    )
    np.testing.assert_array_equal(later.pcm, closed.pcm)
    # announced once the pad had passed, before the close
    position = {id(e.utterance if isinstance(e, SpeechPaused) else e): i for i, e in enumerate(events)}
    assert position[id(later)] < position[id(closed)]


def test_long_speech_is_sent_so_far_every_interim_s_with_the_index_it_will_close_with() -> None:
    probs = [0.0] * seconds(1) + [0.9] * seconds(7) + [0.0] * seconds(1)
    events = run(probs, Segmenter(VadSettings(min_silence_ms=500, speech_pad_ms=0), interim_s=2.0))
    so_far = [e.utterance for e in events if isinstance(e, SpeechSoFar)]
    (closed,) = utterances(events)
    # speech 1.0-8.0 s: the speech so far at 3, 5 and 7 s, each from the speech start, all before the close
    assert [u.t1 for u in so_far] == pytest.approx([3.0, 5.0, 7.0], abs=DT)
    assert all(u.t0 == closed.t0 and u.index == closed.index for u in so_far)
    assert all(events.index(e) < events.index(closed) for e in events if isinstance(e, SpeechSoFar))
    # each carries the audio heard so far (sample value = chunk index)
    assert so_far[-1].pcm[-1] == seconds(7) - 1


def test_interim_lead_sends_the_speech_so_far_early_on_the_same_grid() -> None:
    segmenter = Segmenter(VadSettings(min_silence_ms=500, speech_pad_ms=0), interim_s=2.0)
    segmenter.interim_lead_s = 0.4  # a transcript takes 0.4 s: asked for then, it comes out on the 2 s grid
    events = run([0.0] * seconds(1) + [0.9] * seconds(7) + [0.0] * seconds(1), segmenter)
    so_far = [e.utterance for e in events if isinstance(e, SpeechSoFar)]
    assert [u.t1 for u in so_far] == pytest.approx([2.6, 4.6, 6.6], abs=DT)
    slow = Segmenter(VadSettings(min_silence_ms=500, speech_pad_ms=0), interim_s=2.0)
    slow.interim_lead_s = (
        5.0  # never more than half a step early: at 1 s of speech (grid 2 s), then 3 s (grid 4 s)
    )
    events = run([0.0] * seconds(1) + [0.9] * seconds(3) + [0.0] * seconds(1), slow)
    assert [e.utterance.t1 for e in events if isinstance(e, SpeechSoFar)] == pytest.approx([2.0, 4.0], abs=DT)


def test_short_speech_and_silence_get_no_interim() -> None:
    probs = [0.9] * seconds(1.5) + [0.0] * seconds(5)
    events = run(probs, Segmenter(VadSettings(min_silence_ms=500), interim_s=2.0))
    assert not [e for e in events if isinstance(e, SpeechSoFar)]
    assert len(utterances(events)) == 1


def test_a_stall_closes_the_open_speech_and_later_audio_starts_afresh() -> None:
    segmenter = Segmenter(VadSettings(min_silence_ms=500, speech_pad_ms=0))
    events = run([0.0] * seconds(1) + [0.9] * seconds(2), segmenter)
    (stalled,) = utterances(events + segmenter.flush("stall"))
    assert stalled.reason == "stall" and stalled.t1 == pytest.approx(3.0, abs=DT)
    # media comes back 4 s later: a new utterance, its audio only what came after the gap
    later: list[object] = []
    for i in range(seconds(2)):
        later += segmenter.push(7.0 + i * DT, np.full(CHUNK, 1000 + i, np.float32), 0.9)
    later += segmenter.push(9.0, np.zeros(CHUNK, np.float32), 0.0)
    later += segmenter.flush()
    (resumed,) = utterances(later)
    assert resumed.index == stalled.index + 1
    assert resumed.t0 == pytest.approx(7.0, abs=DT) and resumed.pcm_t0 >= 7.0 - 1e-9
    # nothing from before the gap (those samples were 31..92); the closing chunk of silence is zeros
    assert np.all((resumed.pcm >= 1000) | (resumed.pcm == 0))
    assert len(resumed.pcm) / 16_000 == pytest.approx(2.0, abs=2 * DT)
