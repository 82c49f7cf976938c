"""The `microemo` command: `serve`, `analyze` a recording, `eval` on labelled clips, `train` on them."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from stream.config import ConfigError, LoggingSettings, Settings, load_settings

if TYPE_CHECKING:
    from model.training.corpora import CorpusClip

TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(call)s/%(participant)s] %(message)s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="microemo", description="Real-time emotion analysis for live calls")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the WebRTC + events server")
    analyze = commands.add_parser(
        "analyze", help="run a recorded call (any file PyAV reads) through the pipeline"
    )
    analyze.add_argument("file", type=Path)
    analyze.add_argument("--out", type=Path, help="events as JSON lines (default: FILE.events.jsonl)")
    analyze.add_argument("--plot", type=Path, help="also draw the timeline to this PNG")
    analyze.add_argument("--call", default="offline")
    analyze.add_argument("--participant", default="speaker")
    evaluate = commands.add_parser(
        "eval", help="score the pipeline on labelled clips (a JSON-lines manifest)"
    )
    evaluate.add_argument("manifest", type=Path)
    evaluate.add_argument("--top-k", type=int, default=3, help="labels per clip compared with the truth")
    evaluate.add_argument("--out", type=Path, help="write the whole report here (JSON); prints a summary")
    evaluate.add_argument("--limit", type=int, help="score only the first N clips of the manifest")
    for command in (serve, analyze, evaluate):
        command.add_argument("--config", type=Path, default=Path("config.yaml"), help="YAML config")
    add_train_command(commands)
    add_data_command(commands)
    add_train_heads_command(commands)
    args = parser.parse_args(argv)

    if args.command == "data":  # reads file names only: no config, no models
        setup_logging(LoggingSettings())
        return build_manifest(args)
    if args.command == "train-heads":  # needs no config file: the live defaults cut and encode the clips
        setup_logging(LoggingSettings())
        return train_heads_command(args)
    if args.command == "train":  # needs no config file: everything it uses is on the command line
        setup_logging(LoggingSettings())
        return train_model(args)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"microemo: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.logging)
    limit_torch_threads()
    try:
        if args.command == "serve":
            return serve_forever(settings)
        if args.command == "eval":
            return evaluate_clips(args, settings)
        return analyze_file(args, settings)
    except ConfigError as exc:  # found while loading models, e.g. a projector trained for another LLM
        print(f"microemo: {exc}", file=sys.stderr)
        return 2


def limit_torch_threads() -> None:
    """One intra-op thread for the pipeline's torch models (MiniLM, an LLM on the CPU), set once per process.

    They run one utterance at a time beside the transcription's own CTranslate2 threads; more torch threads
    would fight those for the cores and slow the transcripts every event waits for."""
    import torch

    torch.set_num_threads(1)


def analyze_file(args: argparse.Namespace, settings: Settings) -> int:
    from stream.events import is_valid_id
    from stream.offline import OfflinePipeline
    from stream.plot import plot_timeline

    if not args.file.is_file():
        print(f"microemo: no such file: {args.file}", file=sys.stderr)
        return 2
    if not (is_valid_id(args.call) and is_valid_id(args.participant)):
        print("microemo: --call and --participant must match [A-Za-z0-9_-]{1,64}", file=sys.stderr)
        return 2
    out = args.out or args.file.with_name(args.file.name + ".events.jsonl")
    pipeline = OfflinePipeline(settings)
    try:
        messages = asyncio.run(pipeline.analyze(args.file, out, call=args.call, participant=args.participant))
    except (RuntimeError, ValueError, OSError) as exc:  # PyAV's errors are OSErrors
        print(f"microemo: {exc}", file=sys.stderr)
        return 1
    finally:
        pipeline.close()
    counts = {t: sum(m["type"] == t for m in messages) for t in ("utterance", "face", "emotion")}
    print(f"{len(messages)} events ({counts}) written to {out}")
    if args.plot:
        print(f"timeline drawn to {plot_timeline(messages, args.plot, title=args.file.name)}")
    return 0


def evaluate_clips(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console

    from model.training.evaluation import ManifestError
    from stream.evaluate import evaluate_manifest, summary
    from stream.offline import OfflinePipeline

    if args.limit is not None and args.limit < 1:
        print(f"microemo: --limit must be at least 1, got {args.limit}", file=sys.stderr)
        return 2
    pipeline = OfflinePipeline(settings)
    try:
        report = asyncio.run(
            evaluate_manifest(pipeline, args.manifest, top_k=args.top_k, limit=args.limit, progress=True)
        )
    except (ManifestError, RuntimeError, ValueError, OSError) as exc:
        print(f"microemo: {exc}", file=sys.stderr)
        return 1
    finally:
        pipeline.close()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    console = Console(markup=False)  # clip names and group values are plain text, whatever brackets they hold
    console.print(summary(report))
    if args.out:
        console.print(f"full report: {args.out}", highlight=False)
    return 0


def add_train_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # Defaults left None fall back to TrainConfig's; torch is imported only when training.
    train = commands.add_parser(
        "train", help="train the video encoder, Q-Formers and projector as a soft prompt of a frozen LLM"
    )
    train.add_argument("manifest", type=Path, help="labelled clips, JSON lines (as for eval)")
    train.add_argument("--llm", type=Path, required=True, help="folder of the frozen causal LM")
    train.add_argument("--gguf-file", help="a GGUF file inside the --llm folder")
    train.add_argument(
        "--out", type=Path, required=True, help="folder for step-N.pt, latest.pt and cached clip features"
    )
    train.add_argument("--steps", type=int, help="steps in all, counting those of a resumed run (1000)")
    train.add_argument(
        "--batch-size", type=int, help="calls per step (4); clips sharing a manifest `call` are one"
    )
    train.add_argument(
        "--mode", choices=("rank", "generate"), help="emotion.llm.mode the projector will serve (rank)"
    )
    train.add_argument("--lr", type=float, help="AdamW learning rate (1e-4)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from latest.pt")
    train.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    train.add_argument("--fps", type=float, default=5.0, help="frames sampled per second of each clip")


def train_model(args: argparse.Namespace) -> int:
    """Prints one JSON line at the end: first and last loss, steps done, the checkpoint written."""
    import dataclasses

    import torch

    from model.training.fit_projector import CheckpointExistsError, TrainConfig
    from model.training.train_projector import train_from_manifest

    if args.device == "cuda" and not torch.cuda.is_available():
        print("microemo: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    if args.fps <= 0:
        print(f"microemo: --fps must be positive, got {args.fps}", file=sys.stderr)
        return 2
    given = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "mode": args.mode}
    try:
        config = dataclasses.replace(
            TrainConfig(device=args.device), **{k: v for k, v in given.items() if v is not None}
        )
        result = train_from_manifest(
            args.manifest, args.llm, args.out, config, args.resume, args.gguf_file, fps=args.fps
        )
    # A missing manifest, clip or LLM, a run already in --out, a bad manifest line or setting (ManifestError
    # is a ValueError): the user can fix these, and the message says how.
    except (FileNotFoundError, CheckpointExistsError, ValueError) as exc:
        print(f"microemo: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as exc:  # e.g. out of memory, an unreadable clip (PyAV raises OSErrors)
        print(f"microemo: training failed: {exc}", file=sys.stderr)
        return 1
    summary = {
        "first_loss": result.losses[0],
        "last_loss": result.losses[-1],
        "steps": len(result.losses),
        "resumed_at": result.first_step,
        "checkpoint": str(result.checkpoint),
    }
    print(json.dumps(summary), flush=True)
    return 0


def add_train_heads_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    heads = commands.add_parser(
        "train-heads",
        help="train the voice (and words') heads and their fusion on labelled data (CPU, minutes)",
    )
    heads.add_argument("manifests", type=Path, nargs="+", help="labelled clips, JSON lines (split 'train')")
    heads.add_argument(
        "--text",
        type=Path,
        nargs="+",
        default=[],
        help="dialogue manifests (microemo data meld|emorynlp|goemotions, all splits): heads/2 with the words",
    )
    heads.add_argument("--text-cache", type=Path, help="MiniLM embeddings cache (OUT/minilm_texts.npz)")
    heads.add_argument(
        "--text-heads",
        type=Path,
        help="keep the words' heads of this heads file instead of training them again (with --text)",
    )
    heads.add_argument(
        "--faces",
        type=Path,
        nargs="+",
        default=[],
        help="face image manifests (train/dev/test): the face head",
    )
    heads.add_argument("--face-cache", type=Path, help="the stills' faces, cached (OUT/face_stills.npz)")
    heads.add_argument("--out", type=Path, required=True, help="folder for heads.npz, report.json, features")
    heads.add_argument(
        "--features", type=Path, help="voice feature cache shared between runs (OUT/voice_features.npz)"
    )
    heads.add_argument(
        "--window",
        choices=("speech", "full"),
        help="what Whisper's encoder reads (audio.asr.window; default: the server's default): the voice head "
        "must learn on the window the server will encode",
    )
    heads.add_argument("--seed", type=int, default=0)
    heads.add_argument("--epochs", type=int, help="passes over the utterances (60)")
    heads.add_argument("--hidden", type=int, help="hidden units of each head (256)")


def train_heads_command(args: argparse.Namespace) -> int:
    """Prints the report (training data, speaker-grouped cross-validated scores) as JSON."""
    import dataclasses

    from model.training.evaluation import ManifestError
    from model.training.fit_heads import HeadConfig
    from model.training.train_heads import train_heads

    given = {"epochs": args.epochs, "hidden": args.hidden}
    config = dataclasses.replace(
        HeadConfig(seed=args.seed), **{k: v for k, v in given.items() if v is not None}
    )
    try:
        report = train_heads(
            args.manifests,
            args.out,
            config,
            features=args.features,
            text=args.text,
            text_cache=args.text_cache,
            faces=args.faces,
            face_cache=args.face_cache,
            window=args.window,
            text_heads=args.text_heads,
        )
    except (FileNotFoundError, ManifestError, ValueError) as exc:  # ReservedClipError is a ValueError
        print(f"microemo: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2), flush=True)
    print(f"heads written to {args.out / 'heads.npz'}", file=sys.stderr)
    return 0


def add_data_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from model.training.corpora import READERS
    from model.training.dialogue_corpora import DIALOGUE_READERS
    from model.training.face_corpora import FACE_CORPORA

    data = commands.add_parser(
        "data", help="write the manifest of a labelled corpus (a local copy) and print its lines per class"
    )
    data.add_argument("corpus", choices=sorted([*READERS, *DIALOGUE_READERS, *FACE_CORPORA]))
    data.add_argument("root", type=Path, help="folder of the local copy")
    data.add_argument("--out", type=Path, required=True, help="manifest to write (JSON lines)")
    data.add_argument(
        "--split",
        choices=("train", "dev", "test", "all"),
        default="all",
        help="rows of this split only (all; dev: the text corpora's)",
    )
    data.add_argument(
        "--sample",
        type=int,
        help="a random subset of this many clips (drawn with --seed from the sorted paths)",
    )
    data.add_argument("--seed", type=int, default=0)


def build_manifest(args: argparse.Namespace) -> int:
    from model.training.corpora import CorpusError, corpus_clips, count_table, write_manifest
    from model.training.dialogue_corpora import (
        DIALOGUE_READERS,
        DialogueCorpusError,
        dialogue_count_table,
        write_dialogue_manifest,
    )
    from model.training.face_corpora import (
        FACE_CAPS,
        FACE_CORPORA,
        FaceCorpusError,
        capped,
        face_images,
        write_face_manifest,
    )
    from model.training.face_corpora import count_table as face_count_table

    if args.corpus in DIALOGUE_READERS:  # text corpora: utterances with their dialogue and turn
        try:
            lines = write_dialogue_manifest(args.corpus, args.root, args.out, args.split)
        except DialogueCorpusError as exc:
            print(f"microemo: {exc}", file=sys.stderr)
            return 2
        print(f"{args.corpus} ({args.split}): {len(lines)} lines written to {args.out}")
        print(dialogue_count_table(lines))
        return 0
    if args.corpus in FACE_CORPORA:  # still images (face-only clips), capped per split and family
        try:
            images = [
                image
                for image in capped(face_images(args.corpus, args.root), FACE_CAPS[args.corpus])
                if args.split in ("all", image.split)
            ]
        except FaceCorpusError as exc:
            print(f"microemo: {exc}", file=sys.stderr)
            return 2
        written = write_face_manifest(images, args.out)
        print(f"{args.corpus} ({args.split}): {written} images written to {args.out}")
        print(json.dumps(face_count_table(images), indent=1))
        return 0
    if args.split == "dev":
        print(f"microemo: {args.corpus} has no dev split (train, test or all)", file=sys.stderr)
        return 2
    try:
        clips = corpus_clips(args.corpus, args.root, args.split)
    except CorpusError as exc:
        print(f"microemo: {exc}", file=sys.stderr)
        return 2
    if args.sample is not None:
        clips = sample_clips(clips, args.sample, args.seed)
    written = write_manifest(clips, args.out)
    print(f"{args.corpus} ({args.split}): {written} clips written to {args.out}")
    print(count_table(clips))
    return 0


def sample_clips(clips: list[CorpusClip], size: int, seed: int) -> list[CorpusClip]:
    """`size` clips drawn at random (a seeded shuffle of the sorted paths), kept in their corpus order."""
    import random

    order = sorted(clips, key=lambda clip: clip.path)
    random.Random(seed).shuffle(order)
    chosen = {clip.path for clip in order[:size]}
    return [clip for clip in clips if clip.path in chosen]


def setup_logging(settings: LoggingSettings) -> None:
    """Text for people, or one JSON object a line for log pipelines; call/participant ride along."""
    from stream.serve.auth import RedactTokens

    handler = logging.StreamHandler()
    handler.addFilter(RedactTokens())
    if settings.format == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(TEXT_LOG_FORMAT, defaults={"call": "-", "participant": "-"}))
    logging.basicConfig(level=settings.level, handlers=[handler], force=True)


def serve_forever(settings: Settings) -> int:
    from model.audio.whisper import AsrModelMissing, resolve_model_path
    from stream.serve.server import create_app

    try:  # fail before binding the port, with the path in the message
        resolve_model_path(settings.audio.asr.model_path)
    except AsrModelMissing as exc:
        print(f"microemo: {exc}", file=sys.stderr)
        return 2
    ssl_context = None
    if settings.server.tls_cert and settings.server.tls_key:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(settings.server.tls_cert, settings.server.tls_key)
    asyncio.run(_serve(create_app(settings), settings, ssl_context))
    return 0


async def _serve(app: web.Application, settings: Settings, ssl_context: ssl.SSLContext | None) -> None:
    """Serve until SIGINT, or until a SIGTERM's drain ends (stream/serve/admission.py); then shut down as always."""
    from stream.serve.admission import Drain
    from stream.serve.server import SERVICES

    runner = web.AppRunner(
        app,
        shutdown_timeout=settings.server.shutdown_timeout_s,
        keepalive_timeout=settings.server.idle_timeout_s,  # also bounds a request whose headers never end
    )
    await runner.setup()  # runs the app's start-up: models load here
    stopping = asyncio.Event()
    services = app[SERVICES]
    drain = Drain(
        services.admission, lambda: services.participant_count, settings.server.drain_timeout_s, stopping.set
    )
    drain.install(asyncio.get_running_loop())
    try:
        site = web.TCPSite(runner, settings.server.host, settings.server.port, ssl_context=ssl_context)
        await site.start()
        print(f"======== Running on {site.name} ========", flush=True)
        await stopping.wait()
    finally:
        await runner.cleanup()  # the app's shutdown: open utterances are flushed, peers told goodbye


if __name__ == "__main__":
    sys.exit(main())
