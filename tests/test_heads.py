"""The learned emotion heads: features, training on a tiny generated corpus, refusal of reserved clips,
the shipped weights, and the estimator built on them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from model.audio.prosody import measure_prosody
from model.emotion.clues import AudioClues, Clues, TextClues
from model.emotion.dialogue import ARRAY_PREFIXES
from model.emotion.estimator import HeadsEstimator
from model.emotion.heads import (
    DEFAULT_HEADS,
    WHISPER_FRAME_SAMPLES,
    EmotionHeads,
    Fusion,
    HeadReading,
    pool_encoder_states,
    voice_features,
)
from model.emotion.text_affect import analyse_text
from model.emotion.vocabulary import FAMILIES, EmotionVocabulary
from model.settings import AsrSettings
from model.training.fit_heads import HeadConfig
from model.training.train_heads import train_heads
from tests.harness import run_cli
from tests.media import SPEECH_RATE, decode_mono

SENTENCES = ("The train leaves at noon", "Put the box on the table", "We talked about the weather")
# Two made-up "emotions" spoken by two espeak voices: loud, fast and high versus soft, slow and low.
STYLES = {"anger": ["-s", "230", "-p", "85", "-a", "180"], "sadness": ["-s", "110", "-p", "15", "-a", "50"]}
VOICES = ("en-us", "en+f3")


def test_pooling_reads_only_the_frames_of_the_audio() -> None:
    states = np.zeros((1500, 4), np.float32)
    states[:50] = 1.0  # 1 s of audio is 50 encoder frames; the rest is the 30 s window's padding
    pooled = pool_encoder_states(states, n_samples=SPEECH_RATE)
    assert pooled.shape == (8,)
    assert np.allclose(pooled[:4], 1.0) and np.allclose(pooled[4:], 0.0)  # mean 1, std 0 over its frames
    assert np.allclose(pool_encoder_states(states, n_samples=2 * SPEECH_RATE)[:4], 0.5)
    assert WHISPER_FRAME_SAMPLES * 50 == SPEECH_RATE


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 clips: 2 voices (the speakers) × 2 styles × 3 sentences, with a manifest of the training split."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    folder = tmp_path_factory.mktemp("tiny_corpus")
    lines = []
    for voice in VOICES:
        for family, style in STYLES.items():
            for i, sentence in enumerate(SENTENCES):
                name = f"{voice.replace('+', '_')}-{family}-{i}.wav"
                subprocess.run(
                    ["espeak-ng", "-v", voice, *style, "-w", str(folder / name), sentence], check=True
                )
                row = {"clip": name, "labels": [family], "family": family, "dataset": "tiny"}
                lines.append(json.dumps({**row, "speaker": voice, "split": "train"}))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def trained(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("heads")
    config = HeadConfig(epochs=40, folds=2)  # two speakers: each fold is read by a head trained on the other
    report = train_heads([tiny_corpus / "train.jsonl"], out, config)
    return report, out


def test_training_learns_the_styles_across_speakers(trained: tuple[dict, Path]) -> None:
    report, out = trained
    assert report["trained_on"]["clips"] == 12 and report["trained_on"]["speakers"] == 2
    assert report["trained_on"]["clips_without_speech"] == 0
    # every utterance read by a head that never heard its voice: the styles still separate
    assert report["cross_validated"]["voice"]["accuracy"] >= 0.8
    heads = EmotionHeads.load(out / "heads.npz")
    assert heads.name == "heads/1" and heads.face is None
    assert heads.voice_window == AsrSettings().window  # the encoder window it learned on
    cached = np.load(out / "voice_features.npz")
    rows = np.concatenate([cached[key] for key in cached.files])
    readings = [heads.read_voice(row) for row in rows]
    assert all(abs(sum(r.families.values()) - 1) < 1e-6 for r in readings)
    assert {max(r.families, key=r.families.__getitem__) for r in readings} == {"anger", "sadness"}


def test_training_is_deterministic_with_a_seed(
    tiny_corpus: Path, trained: tuple[dict, Path], tmp_path: Path
) -> None:
    _, first = trained
    again = train_heads(
        [tiny_corpus / "train.jsonl"],
        tmp_path,
        HeadConfig(epochs=40, folds=2),
        features=first / "voice_features.npz",
    )
    assert again["cross_validated"] == trained[0]["cross_validated"]
    a, b = np.load(first / "heads.npz"), np.load(tmp_path / "heads.npz")
    assert a.files == b.files
    for key in a.files:
        assert np.array_equal(a[key], b[key]), key


def test_training_refuses_clips_reserved_for_evaluation(tiny_corpus: Path, tmp_path: Path) -> None:
    for reserved in ({"dataset": "emodb", "split": "test"}, {"dataset": "ravdess", "split": "test"}):
        row = {"clip": "en-us-anger-0.wav", "labels": ["angry"], "speaker": "x", **reserved}
        manifest = tiny_corpus / f"reserved-{reserved['dataset']}.jsonl"
        manifest.write_text(json.dumps(row) + "\n")
        result = run_cli("train-heads", str(manifest), "--out", str(tmp_path / "out"))
        assert result.returncode == 2
        assert "reserved for evaluation" in result.stderr
    assert not (tmp_path / "out" / "heads.npz").exists()


def test_fusion_answers_its_prior_without_any_modality() -> None:
    bias = np.log(np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.4], np.float32))
    fusion = Fusion(
        bias, {"voice": 1.0, "face": 1.0}, {m: np.zeros(7, np.float32) for m in Fusion.MODALITIES}
    )
    prior = fusion.fuse({"voice": None, "face": None})
    assert prior.families["neutral"] == pytest.approx(0.4)
    angry = {f: (0.94 if f == "anger" else 0.01) for f in FAMILIES}
    with_voice = fusion.fuse({"voice": HeadReading(angry, -0.7, 0.7), "face": None})
    assert max(with_voice.families, key=with_voice.families.__getitem__) == "anger"
    assert with_voice.arousal > prior.arousal


@pytest.fixture(scope="module")
def shipped() -> EmotionHeads:
    return EmotionHeads.load(DEFAULT_HEADS)


def test_shipped_heads_are_small_and_say_what_they_were_trained_on(shipped: EmotionHeads) -> None:
    assert DEFAULT_HEADS.stat().st_size < 5_000_000
    assert shipped.name.startswith("heads/")
    trained_on = shipped.meta["trained_on"]
    assert trained_on["utterances"] >= 900 and "ravdess" in trained_on["by_dataset"]
    assert set(shipped.meta["families"]) == set(FAMILIES)
    # the voice head learned on the encoder window the server uses by default (audio.asr.window)
    assert shipped.voice_window == AsrSettings().window


def test_the_estimator_reads_the_voice_and_ranks_open_vocabulary_labels(
    shipped: EmotionHeads, tiny_corpus: Path
) -> None:
    from model.training.voice_features import VoiceFeatureExtractor

    extractor = VoiceFeatureExtractor()
    pcm = decode_mono(tiny_corpus / "en-us-anger-0.wav")
    utterance = extractor.utterances(pcm)[0]
    voice = extractor.voice_states(utterance.pcm)
    prosody = measure_prosody(utterance.pcm)
    assert voice_features(voice, prosody).shape == (shipped.voice.in_features,)
    estimator = HeadsEstimator(EmotionVocabulary.load(), shipped, top_k=5)
    text = TextClues("The train leaves at noon", analyse_text("The train leaves at noon"), None)
    heard = estimator.estimate(Clues("u-0", 0.0, 1.0, text, None, AudioClues(prosody, voice)))
    assert heard.model == shipped.name
    assert len(heard.labels) == 5 and sum(score for _, score in heard.labels) == pytest.approx(1, abs=1e-3)
    assert abs(sum(heard.families.values()) - 1) < 1e-6
    assert any(vote.modality == "audio" and "reads as" in vote.evidence[0] for vote in heard.votes)
    # nothing heard, nothing seen: the fusion's prior, still a full answer
    silent = estimator.estimate(Clues("u-1", 0.0, 1.0, None, None, None))
    assert silent.model == shipped.name and silent.labels and not silent.votes
    assert silent.families != heard.families


def test_transcription_keeps_the_encoder_states_the_voice_head_was_trained_on(tiny_corpus: Path) -> None:
    from model.training.voice_features import VoiceFeatureExtractor

    extractor = VoiceFeatureExtractor()
    utterance = extractor.utterances(decode_mono(tiny_corpus / "en-us-sadness-1.wav"))[0]
    transcript = extractor.transcriber.transcribe(utterance.pcm, utterance.pcm_t0)
    assert "table" in transcript.text.lower()
    assert transcript.voice is not None
    standalone = extractor.voice_states(utterance.pcm)
    # the same encoder on the same audio; the mel frames at the window's edge differ slightly
    assert np.corrcoef(transcript.voice, standalone)[0, 1] > 0.99


def test_the_recordings_words_are_kept_with_how_sure_the_recogniser_was(
    tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fusion learns the recordings' words at their live say, so the cache keeps how sure Whisper was;
    an entry of an older cache (the text alone) is heard again."""
    from model.training import voice_features
    from model.training.feature_cache import cache_key

    clip = tiny_corpus / "en-us-sadness-1.wav"
    cache = tmp_path / "transcripts.json"
    cache.write_text(json.dumps({cache_key(clip): ["put the box on the table"]}))
    [heard] = voice_features.extract_transcripts([clip], cache)
    assert len(heard) == 1 and "table" in heard[0].text.lower()
    assert heard[0].sure is not None and 0.0 < heard[0].sure <= 1.0
    monkeypatch.setattr(voice_features, "VoiceFeatureExtractor", None)  # from the cache now, or a TypeError
    assert voice_features.extract_transcripts([clip], cache) == [heard]


def test_a_smile_reads_as_happiness_by_the_face_head_and_by_the_rules_without_one(
    shipped: EmotionHeads,
) -> None:
    from model.emotion.clues import VisualClues

    smile = VisualClues(
        present=1.0,
        episodes=(),
        blinks=0,
        action_units={"lip_corner_pull": 0.6, "cheek_raise": 0.3},
        expression={"happy": 0.9, "neutral": 0.1},
    )
    assert shipped.face is not None  # heads/2: learned on real labelled faces
    voice_only = EmotionHeads.load(DEFAULT_HEADS.with_name("heads-1.npz"))  # heads/1: no face head
    assert voice_only.face is None
    for heads in (shipped, voice_only):
        seen = HeadsEstimator(EmotionVocabulary.load(), heads).estimate(
            Clues("u-0", 0.0, 1.0, None, smile, None)
        )
        assert max(seen.families, key=seen.families.__getitem__) == "happiness"
        assert seen.valence > 0
        assert [vote.modality for vote in seen.votes] == ["visual"]
        assert seen.votes[0].evidence[0].startswith("visual reads as happiness")


def test_a_modality_without_say_counts_as_absent() -> None:
    bias = np.log(np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.4], np.float32))
    shifts = {m: np.full(7, 0.2, np.float32) for m in Fusion.MODALITIES}
    fusion = Fusion(bias, {"voice": 1.0, "text": 1.0}, shifts)
    angry = HeadReading({f: (0.94 if f == "anger" else 0.01) for f in FAMILIES}, -0.7, 0.7)
    absent = fusion.fuse({"text": None})
    assert fusion.fuse({"text": angry}, say={"text": 0.0}).families == absent.families
    half = fusion.fuse({"text": angry}, say={"text": 0.5}).families["anger"]
    full = fusion.fuse({"text": angry}).families["anger"]
    assert absent.families["anger"] < half < full


def test_the_fusion_learns_the_words_at_the_say_they_have_live() -> None:
    """Recordings in a language the recogniser does not know: it writes sure-looking sad words for angry
    speech. Fitted at their live say (none), those words cannot teach the fusion that sad words mean anger."""
    from model.training.fit_fusion import FusionRows, family_probabilities, fit

    def sure_of(family: str) -> HeadReading:
        return HeadReading({f: (0.94 if f == family else 0.01) for f in FAMILIES}, 0.0, 0.0)

    n_recorded, n_written = 300, 60
    families = ["anger"] * n_recorded + ["sadness", "happiness"] * (n_written // 2)
    rows = FusionRows(
        {
            "voice": [sure_of("anger")] * n_recorded + [None] * n_written,
            "text": [sure_of("sadness")] * n_recorded + [sure_of(f) for f in families[n_recorded:]],
        },
        np.array([FAMILIES.index(f) for f in families]),
        ["recordings"] * n_recorded + ["dialogue"] * n_written,
        {"text": [0.0] * n_recorded + [1.0] * n_written},
    )
    written_sad = FusionRows({"text": [sure_of("sadness")]}, np.array([FAMILIES.index("sadness")]), ["line"])
    config = HeadConfig(seed=0)
    anger = FAMILIES.index("anger")
    as_live = family_probabilities(fit(rows, config), written_sad)[0]
    assert FAMILIES[int(np.argmax(as_live))] == "sadness" and as_live[anger] < 0.05
    # what the same rows teach when every word counts: sad words may mean anger
    in_full = fit(FusionRows(rows.readings, rows.families, rows.sources), config)
    assert family_probabilities(in_full, written_sad)[0][anger] > 0.1


def test_words_the_recogniser_was_unsure_of_have_no_say(shipped: EmotionHeads) -> None:
    from model.emotion.heads import HEARD_SURE, HEARD_UNSURE, words_say
    from model.emotion.vocabulary import SentenceEncoder

    assert words_say(None) == 1.0  # a written line: its words count in full
    assert words_say(HEARD_UNSURE) == 0.0 and words_say(HEARD_SURE) == 1.0
    assert 0.0 < words_say((HEARD_UNSURE + HEARD_SURE) / 2) < 1.0
    sentence = "Thank you so much, that's wonderful"
    embedding = SentenceEncoder().embed_one(sentence)
    estimator = HeadsEstimator(EmotionVocabulary.load(), shipped)

    def read(heard: float | None, with_text: bool = True) -> tuple[dict[str, float], float]:
        text = TextClues(sentence, analyse_text(sentence), embedding, heard) if with_text else None
        estimate = estimator.estimate(Clues("u-0", 0.0, 1.0, text, None, None))
        return estimate.families, estimate.valence

    sure, unsure, unheard = read(HEARD_SURE), read(HEARD_UNSURE), read(None, with_text=False)
    assert max(sure[0], key=sure[0].__getitem__) == "happiness" and sure[1] > unheard[1]
    assert unsure == unheard  # the same reading as no words at all
    assert read(None) == sure  # a written line counts as surely heard


def test_kept_words_heads_are_the_files_own_and_the_fusion_learns_the_words(
    tiny_corpus: Path, trained: tuple[dict, Path], tmp_path: Path
) -> None:
    """--text-heads: a retrain of the voice and the fusion keeps the words' heads of a file byte for byte (the
    dialogue manifests then only give the fusion its rows of words alone)."""
    _, first = trained
    said = {
        "anger": ["Get out of my room right now!", "I am so angry at you.", "Stop yelling at me!"],
        "sadness": ["I miss her so much.", "Nobody came to my party.", "I lost my job today."],
    }
    lines = [
        {"text": text, "family": family, "labels": [family], "sentiment": -1, "dialogue": f"meld-dev-{i}",
         "turn": 0, "speaker": "Ross", "dataset": "meld", "modality": "text", "split": "dev"}
        for family, texts in said.items() for i, text in enumerate(texts)
    ]  # fmt: skip
    dialogue = tmp_path / "dialogue.jsonl"
    dialogue.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    report = train_heads(
        [tiny_corpus / "train.jsonl"],
        out,
        HeadConfig(epochs=40, folds=2),
        features=first / "voice_features.npz",
        text=[dialogue],
        text_cache=tmp_path / "minilm.npz",
        text_heads=DEFAULT_HEADS,
    )
    shipped, retrained = np.load(DEFAULT_HEADS), np.load(out / "heads.npz")
    words = [key for key in shipped.files if key.split(".")[0] in ARRAY_PREFIXES]
    assert len(words) > 10 and set(words) <= set(retrained.files)
    for key in words:
        assert np.array_equal(shipped[key], retrained[key]), key
    assert report["text"] == json.loads(str(shipped["meta"]))["text"]
    heads = EmotionHeads.load(out / "heads.npz")
    assert heads.name == "heads/2" and heads.text is not None and "text" in heads.fusion.modalities
    assert report["trained_on"]["fusion_rows"] == {"recordings": 12, "meld dev": 6}
    # without dialogue manifests there is nothing for the kept heads to do: a clear error, not a silent heads/1
    result = run_cli(
        "train-heads", str(tiny_corpus / "train.jsonl"), "--text-heads", str(DEFAULT_HEADS),
        "--out", str(tmp_path / "none"),
    )  # fmt: skip
    assert result.returncode == 2 and "--text" in result.stderr
