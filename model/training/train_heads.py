"""`microemo train-heads MANIFEST... --out DIR`: labelled clips → voice features → trained heads (.npz).

Refuses clips reserved for evaluation or choices (a corpus in EVALUATION_ONLY, or a line with split "test" or
"dev": `corpora.withheld`), so a head is never trained on what its scores are measured or chosen with. Reports speaker-grouped cross-validated scores: each
utterance read by a head that never heard its speaker.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from model.emotion.dialogue import ARRAY_PREFIXES, DialogueHeads
from model.emotion.heads import HeadReading, Mlp, save_heads, words_say
from model.emotion.vocabulary import FAMILIES, EmotionVocabulary
from model.settings import AsrSettings
from model.training import fit_face, fit_text
from model.training.corpora import withheld
from model.training.evaluation import LabelledClip, family_of, load_manifest
from model.training.fit_fusion import FusionRows, cross_validated, fit, reading
from model.training.fit_heads import (
    HeadConfig,
    LabelledFeatures,
    out_of_fold_readings,
    scores,
    train_mlp,
)
from model.training.fit_text import Corpus, load_corpus
from model.training.text_embeddings import EmbeddingCache
from model.training.voice_features import (
    ClipVoice,
    Heard,
    VoiceFeatureExtractor,
    extract_transcripts,
    extract_voice,
)

log = logging.getLogger(__name__)


class ReservedClipError(ValueError):
    """A training manifest names a clip reserved for evaluation."""


def training_clips(manifests: list[Path]) -> list[LabelledClip]:
    """The manifests' recordings (their text lines train the text head: model/training/fit_text.py)."""
    clips = [clip for manifest in manifests for clip in load_manifest(manifest) if clip.clip is not None]
    for clip in clips:
        if withheld(clip.groups, ("dev", "test")):
            dataset = clip.groups.get("dataset", "").lower()
            raise ReservedClipError(
                f"{clip.name}: reserved for evaluation or choices (dataset {dataset or '?'}, split "
                f"{clip.groups.get('split', '?')}); train on split 'train' lines only"
            )
    return clips


def train_heads(
    manifests: list[Path],
    out: Path,
    config: HeadConfig,
    features: Path | None = None,
    *,
    text: Sequence[Path] = (),
    text_cache: Path | None = None,
    faces: Sequence[Path] = (),
    face_cache: Path | None = None,
    window: Literal["speech", "full"] | None = None,
    text_heads: Path | None = None,
) -> dict[str, Any]:
    """Trains the heads; writes OUT/heads.npz and OUT/report.json.

    manifests: recordings (split train) for the voice head. text: dialogue manifests (meld, emorynlp,
    goemotions: model/training/fit_text.py trains the text head, fine labels and context on their train
    splits, chooses on dev, never reads MELD test) for the words; with them the file is heads/2, and the
    fusion also learns from the words Whisper hears in the recordings and from the dialogues' dev lines.
    faces: image manifests (model/training/face_corpora.py; train, dev and test splits): the face head is
    chosen on dev and trained on train (model/training/fit_face.py); the fusion learns from the dev faces.
    `features`: the voice feature cache (default OUT/voice_features.npz); `text_cache`: MiniLM embeddings;
    `face_cache`: the stills' faces. `window`: what Whisper's encoder reads (audio.asr.window; None: the
    default), so the voice head learns on the states the server will compute. `text_heads`: a heads file whose
    words' heads are kept as they are, not trained again (the text manifests then only give the fusion its
    dialogue rows): a retrain of the voice or the fusion leaves the words' reading of every line unchanged."""
    if text_heads is not None and not text:
        raise ValueError(
            "--text-heads keeps the words' heads of a file: give the dialogue manifests (--text)"
        )
    clips = [c for c in training_clips(manifests) if c.clip is not None]
    paths = [c.clip for c in clips if c.clip is not None]
    asr = AsrSettings() if window is None else AsrSettings(window=window)
    extractor = VoiceFeatureExtractor(asr=asr)
    voice_data = utterances_heard(
        clips, extract_voice(paths, features or out / "voice_features.npz", extractor)
    )
    data = voice_data.features
    log.info("training on %d utterances of %d speakers", len(data.families), len(set(data.speakers)))
    readings = out_of_fold_readings(data, config)
    voice = train_mlp(data, config)
    recordings: dict[str, list[HeadReading | None]] = {"voice": list(readings)}
    said: dict[str, list[float]] = {}  # the words' say in each recording's row (Fusion.fuse)
    parts: list[FusionRows] = []
    text_arrays, text_meta, text_report = None, None, None
    if text:
        cache = EmbeddingCache(text_cache or out / "minilm_texts.npz")
        corpus = load_corpus(text, cache)
        if text_heads is None:
            text_arrays, text_meta, text_report = fit_text.train(corpus)
        else:
            text_arrays, text_meta = words_heads_of(text_heads)
            text_report = {"kept_from": str(text_heads)}
        words = DialogueHeads.from_arrays(text_arrays, text_meta, "training")
        heard_words = extract_transcripts(paths, out / "transcripts.json", extractor)
        recordings["text"], said["text"] = recording_words(words, cache, heard_words, voice_data.owners)
        parts.append(dialogue_rows(words, corpus))
    face_head, face_meta = None, None
    if faces:
        face_head, face_meta, face_part = train_face_head(faces, face_cache or out / "face_stills.npz")
        parts.append(face_part)
    parts.insert(0, FusionRows(recordings, data.families, ["recordings"] * len(data.families), said))
    fusion_rows = FusionRows.join(parts)
    fusion = fit(fusion_rows, config)
    predicted = np.array([int(np.argmax(r.log_probs)) for r in readings])
    meta: dict[str, Any] = {
        "name": f"heads/{2 if text or faces else 1}",
        "families": list(FAMILIES),
        "voice_features": int(data.features.shape[1]),
        "voice_window": asr.window,  # the encoder window the voice head learned on (audio.asr.window)
        "face": face_meta,  # None without face manifests: the rules' face vote stands in
        "config": asdict(config),
        "trained_on": {
            "manifests": [m.name for m in manifests],
            "clips": len(clips),
            **voice_data.counts(),
            "text": [m.name for m in text],
            "faces": [m.name for m in faces],
            "fusion_rows": dict(Counter(fusion_rows.sources)),
        },
        "cross_validated": {
            "folds": config.folds,
            "voice": scores(data.families, predicted),
            "by_dataset": {
                name: scores(data.families[mask], predicted[mask])
                for name in sorted(set(data.groups["dataset"]))
                if (mask := np.array(data.groups["dataset"]) == name).any()
            },
            "fusion": cross_validated(fusion_rows, config),
        },
    }
    if text_meta is not None:
        meta["text"] = text_meta
    out.mkdir(parents=True, exist_ok=True)
    save_heads(out / "heads.npz", meta, voice, face_head, fusion, text=text_arrays)
    report = {**meta, "text_training": text_report}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    return meta


def words_heads_of(path: Path) -> tuple[dict[str, npt.NDArray[np.float32]], dict[str, Any]]:
    """The words' heads of a heads file (text head, context model, fine labels): their arrays and meta."""
    if not path.is_file():
        raise FileNotFoundError(f"--text-heads: no heads file at {path}")
    with np.load(path, allow_pickle=False) as stored:
        meta = json.loads(str(stored["meta"]))
        arrays = {key: stored[key] for key in stored.files if key.split(".")[0] in ARRAY_PREFIXES}
    if "text" not in meta or "text.mean" not in arrays:
        raise ValueError(f"--text-heads: {path} holds no words' heads (heads/1?)")
    return arrays, meta["text"]


@dataclass(frozen=True)
class HeardUtterances:
    """The recordings' utterances as the voice head reads them, the clip each comes from, the clips unheard."""

    features: LabelledFeatures
    owners: list[int]  # index of each utterance's clip
    unheard: list[str]  # clips in which the VAD heard no speech

    def counts(self) -> dict[str, Any]:
        families = self.features.families.tolist()
        return {
            "utterances": len(families),
            "speakers": len(set(self.features.speakers)),
            "by_dataset": dict(Counter(self.features.groups["dataset"])),
            "by_family": {FAMILIES[f]: n for f, n in sorted(Counter(families).items())},
            "clips_without_speech": len(self.unheard),
        }


def utterances_heard(clips: Sequence[LabelledClip], heard: Sequence[ClipVoice]) -> HeardUtterances:
    vocabulary = EmotionVocabulary.load()
    rows: list[npt.NDArray[np.float32]] = []
    families: list[int] = []
    speakers: list[str] = []
    datasets: list[str] = []
    owners: list[int] = []
    unheard = []
    for index, (clip, clip_voice) in enumerate(zip(clips, heard, strict=True)):
        if not len(clip_voice.features):
            unheard.append(clip.name)  # the VAD heard no speech: nothing the live pipeline would read either
            continue
        family = FAMILIES.index(clip.family or family_of(clip.labels, vocabulary))
        for utterance in clip_voice.features:
            rows.append(utterance)
            families.append(family)
            speakers.append(clip.groups.get("speaker", str(clip.clip.parent) if clip.clip else clip.name))
            datasets.append(clip.groups.get("dataset", "?"))
            owners.append(index)
    if not rows:
        raise ValueError("no clip of the manifests has speech the VAD hears: nothing to train on")
    features = LabelledFeatures(
        features=np.stack(rows),
        families=np.array(families, dtype=np.int64),
        speakers=speakers,
        groups={"dataset": datasets},
    )
    return HeardUtterances(features, owners, unheard)


def recording_words(
    words: DialogueHeads, cache: EmbeddingCache, heard: Sequence[Sequence[Heard]], owners: Sequence[int]
) -> tuple[list[HeadReading | None], list[float]]:
    """What the words of each recorded utterance say (as a call's first utterance: no dialogue before it), and
    their say (`words_say` of how sure Whisper was, as live: English-looking words written for another language
    count little); None where Whisper heard no words, or cut the clip otherwise than the voice features did."""
    said: list[Heard] = []
    seen: dict[int, int] = {}
    for owner in owners:
        n = seen.get(owner, 0)
        seen[owner] = n + 1
        texts = heard[owner]
        said.append(Heard(texts[n].text.strip(), texts[n].sure) if n < len(texts) else Heard("", None))
    spoken = sorted({h.text for h in said if h.text})
    embeddings = dict(zip(spoken, cache.embed(spoken), strict=True)) if spoken else {}
    readings = [
        reading(words.conversation().add("speaker", embeddings[h.text]).contextual.families)
        if h.text
        else None
        for h in said
    ]
    return readings, [words_say(h.sure) if h.text else 1.0 for h in said]


def dialogue_rows(words: DialogueHeads, corpus: Corpus) -> FusionRows:
    """MELD dev and EmoryNLP dev (never trained on): each line's words read with its dialogue before it."""
    readings: list[HeadReading | None] = []
    families, sources = [], []
    for dataset in ("meld", "emorynlp"):
        rows = corpus.rows(dataset, "dev")
        by_dialogue: dict[str, list[int]] = {}
        for i in rows:
            by_dialogue.setdefault(corpus.lines[i].dialogue or f"line-{i}", []).append(int(i))
        for members in by_dialogue.values():
            conversation = words.conversation()
            for i in sorted(members, key=lambda i: corpus.lines[i].turn or 0):
                line = corpus.lines[i]
                contextual = conversation.add(line.speaker or "?", corpus.plain[i]).contextual
                readings.append(reading(contextual.families))
                families.append(FAMILIES.index(line.family))
                sources.append(f"{dataset} dev")
    return FusionRows({"text": readings}, np.array(families, dtype=np.int64), sources)


def train_face_head(manifests: Sequence[Path], cache: Path) -> tuple[Mlp, dict[str, Any], FusionRows]:
    """The face head (chosen on dev, trained on train: model/training/fit_face.py), its meta (the resting
    baselines of the stills included), and its readings of the dev faces for the fusion. Test is not read."""
    samples = fit_face.read_samples(manifests, cache)
    base = fit_face.baselines(samples)
    samples = fit_face.with_features(samples, base)
    choice = fit_face.choose(samples, base)
    config = fit_face.HEAD_CONFIGS[choice["chosen"]["config"]]
    head = fit_face.fit_head(samples, fit_face.TRAINING_SETS[choice["chosen"]["training_set"]], config)
    dev = [s for s in samples if s.image.split == "dev" and s.features is not None]
    readings: list[HeadReading | None] = [
        HeadReading.from_logits(head.logits(s.features)) for s in dev if s.features is not None
    ]
    rows = FusionRows(
        {"face": readings},
        np.array([FAMILIES.index(s.image.family) for s in dev], dtype=np.int64),
        [f"{s.image.dataset} dev faces" for s in dev],
    )
    meta = {
        "baselines": base,
        "chosen": choice["chosen"],
        "config": asdict(config),
        "dev": choice["candidates"],
    }
    return head, meta, rows
