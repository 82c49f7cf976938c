"""The browser call page in real Chromium: fake camera and microphone, a real peer connection, live events."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, Playwright, WebSocketRoute, expect, sync_playwright

from tests.harness import ROOT, ServerProcess
from tests.media import Speech, normalise

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "artifacts"
# Time from getUserMedia (the fake microphone starts playing) to media flowing to the server; the spoken
# sentences must come after it, and CI machines are slow.
LEAD_SILENCE_S = 4.0
SLOW_MS = 90_000  # generous: speech recognition on a slow, shared CI machine

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's Chromium is absent: apt-get install -y --no-install-recommends chromium",
    ),
]


@dataclass(frozen=True)
class FakeMedia:
    """What Chromium's fake capture devices play."""

    wav: Path
    y4m: Path


def write_y4m(path: Path, rgb_frames: list[np.ndarray], fps: int = 30) -> Path:
    """Raw 4:2:0 video that Chromium's fake camera loops; C420jpeg means full-range BT.601."""
    height, width, _ = rgb_frames[0].shape
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in rgb_frames:
            r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
            y = 0.299 * r + 0.587 * g + 0.114 * b
            u = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
            v = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
            planes = [y] + [c.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3)) for c in (u, v)]
            out.write(
                b"FRAME\n" + b"".join(np.clip(p, 0, 255).round().astype(np.uint8).tobytes() for p in planes)
            )
    return path


def swaying_face(n_frames: int = 60, size: tuple[int, int] = (640, 480)) -> list[np.ndarray]:
    """scikit-image's astronaut (a real face) drifting sideways and back: (H, W, 3) uint8 frames."""
    from skimage import data

    photo = data.astronaut()[:480]  # (480, 512, 3)
    width, height = size
    frames = []
    for i in range(n_frames):
        frame = np.full((height, width, 3), (24, 30, 46), np.uint8)
        left = 64 + round(40 * np.sin(2 * np.pi * i / n_frames))
        frame[:, left : left + photo.shape[1]] = photo
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def fake_media(tmp_path_factory: pytest.TempPathFactory, speech: Speech) -> FakeMedia:
    folder = tmp_path_factory.mktemp("browser-media")
    lead = np.zeros(round(LEAD_SILENCE_S * 16_000), np.float32)
    padded = Speech(np.concatenate([lead, speech.samples]), speech.sentences, speech.spans)
    return FakeMedia(
        wav=padded.write_wav(folder / "speech.wav"), y4m=write_y4m(folder / "face.y4m", swaying_face())
    )


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright, fake_media: FakeMedia) -> Iterator[Browser]:
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        headless=True,
        args=[
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={fake_media.wav}%noloop",  # once, like a person speaking
            f"--use-file-for-fake-video-capture={fake_media.y4m}",
            "--allow-loopback-in-peer-connection",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--autoplay-policy=no-user-gesture-required",
        ],
    )
    yield browser
    browser.close()


# Speech indicators last only while someone speaks; record every one the page shows, from page load on.
RECORD_SPEAKING = """
window.speakingSeen = [];
new MutationObserver((records) => {
  for (const record of records) for (const node of record.addedNodes) {
    if (node.nodeType === 1 && node.matches('#participants [data-speaking="true"]')) {
      window.speakingSeen.push(node.dataset.participant);
    }
  }
}).observe(document, { subtree: true, childList: true });
"""


PAGE_ERRORS: dict[str, list[str]] = {}  # uncaught exceptions in each participant's page


def open_page(browser: Browser, server: ServerProcess, call: str, name: str) -> Page:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.add_init_script(RECORD_SPEAKING)
    errors = PAGE_ERRORS.setdefault(name, [])
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server.url}/?call={call}&name={name}")
    return page


def close_page(page: Page, name: str) -> None:
    page.context.close()
    assert not PAGE_ERRORS[name], f"{name}'s page raised: {PAGE_ERRORS[name]}"


def screenshot(page: Page, name: str) -> None:
    """For people to look at: artifacts/ at the repository root."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / name, full_page=True)


def join(page: Page) -> None:
    page.click("#join")
    expect(page.locator("#media-state")).to_have_text("connected", timeout=30_000)


@pytest.fixture(scope="module")
def alice(browser: Browser, server: ServerProcess) -> Iterator[Page]:
    """Alice alone in call browser-solo, her fake microphone speaking the two sentences once."""
    page = open_page(browser, server, "browser-solo", "alice")
    join(page)
    yield page
    close_page(page, "alice")


def transcript_lines(page: Page, participant: str, at_least: int) -> list[dict[str, str]]:
    """The closed utterances' lines (not the greyed words of one still being spoken)."""
    selector = f'#transcript [data-participant="{participant}"][data-utterance][data-final="true"]'
    lines = page.locator(selector)
    page.wait_for_function(
        "([selector, n]) => document.querySelectorAll(selector).length >= n",
        arg=[selector, at_least],
        timeout=SLOW_MS,
    )
    return [
        {
            "utterance": line.get_attribute("data-utterance") or "",
            "when": line.locator(".when").inner_text(),
            "text": line.locator(".text").inner_text(),
        }
        for line in lines.all()
    ]


def key_words_heard(sentence: str, transcript: str) -> float:
    """The fraction of the sentence's content words (4+ letters) found in the transcript."""
    heard = set(normalise(transcript).split())
    key_words = [w for w in normalise(sentence).split() if len(w) >= 4]
    return sum(w in heard for w in key_words) / len(key_words)


def test_joining_shows_own_camera_and_presence(alice: Page) -> None:
    video_width = alice.wait_for_function(
        "() => document.querySelector('#local-video').videoWidth", timeout=10_000
    ).json_value()
    assert video_width == 640
    me = alice.locator('#participants [data-participant="alice"]')
    expect(me).to_have_attribute("data-presence", "joined", timeout=15_000)
    expect(me).to_contain_text("(you)")
    expect(me).to_contain_text("audio + video")
    expect(alice.locator("#transcript .notice")).to_contain_text(["alice joined with audio and video"])
    expect(alice.locator("#health [data-stage='asr']")).to_be_visible()


def test_speech_activity_shows_while_alice_speaks(alice: Page) -> None:
    alice.wait_for_function("() => window.speakingSeen.includes('alice')", timeout=SLOW_MS)
    expect(alice.locator('#participants [data-participant="alice"]')).to_have_attribute(
        "data-speaking", "false", timeout=SLOW_MS
    )


def test_spoken_words_appear_in_the_live_transcript(alice: Page, speech: Speech) -> None:
    # Wait until every sentence is in, however the utterances were cut; ASR may miss a word or two.
    deadline = time.monotonic() + SLOW_MS / 1000
    while True:
        lines = transcript_lines(alice, "alice", at_least=1)
        text = " ".join(line["text"] for line in lines)
        if all(key_words_heard(s, text) >= 0.6 for s in speech.sentences) or time.monotonic() > deadline:
            break
        alice.wait_for_timeout(500)
    for sentence in speech.sentences:
        assert key_words_heard(sentence, text) >= 0.6, (sentence, lines)
    assert all(re.fullmatch(r"\S+ s – \S+ s", line["when"]) for line in lines), lines  # t0 – t1


def test_real_emotions_tag_each_utterance_and_fill_the_emotion_card(alice: Page) -> None:
    lines = transcript_lines(alice, "alice", at_least=2)
    lane = alice.locator('#timeline [data-participant="alice"]')
    for line in lines:
        utterance = line["utterance"]
        expect(alice.locator(f'#transcript [data-utterance="{utterance}"] .tag')).to_have_count(
            1, timeout=SLOW_MS
        )
        expect(lane.locator(f'.pt.valence[data-utterance="{utterance}"]')).to_have_count(1)
    card = alice.locator('#emotions [data-participant="alice"]')
    expect(card.locator(".labels [data-label] .score").first).to_have_text(re.compile(r"^-?\d\.\d\d$"))
    expect(card.locator(".model")).not_to_be_empty()
    expect(card).to_have_attribute("title", re.compile(r"\w"))  # the explanation, on hover
    screenshot(alice, "browser-call.png")


def test_injected_emotions_render_and_the_refined_one_wins(alice: Page, event_validator: Any) -> None:
    # Utterances of our own, after alice's real speech, so that real events cannot interleave with them.
    end = alice.evaluate(
        "() => Math.max(0, ...[...window.microemo.board.people.get('alice').utterances.values()]"
        ".map(u => u.t1 ?? 0))"
    )
    first, second = "injected-1", "injected-2"
    span1, span2 = (end + 1.0, end + 3.0), (end + 4.0, end + 5.5)
    card = alice.locator('#emotions [data-participant="alice"]')

    inject(
        alice, event_validator, emotion(first, span1, "happy", 0.71, valence=0.8, arousal=0.5, final=False)
    )
    expect(card).to_have_attribute("data-utterance", first)
    expect(card).to_have_attribute("data-final", "false")
    expect(card.locator(".top-label")).to_contain_text("happy")
    expect(card).to_contain_text("fast guess")

    refined = emotion(first, span1, "delighted", 0.83, valence=0.9, arousal=0.6, final=True)
    inject(alice, event_validator, refined)
    expect(card).to_have_attribute("data-final", "true")
    expect(card.locator(".labels [data-label]")).to_have_text(
        [re.compile(r"delighted\s+0\.83"), re.compile(r"calm\s+0\.17")], use_inner_text=True
    )
    expect(card).to_have_attribute("title", refined["explanation"])
    expect(card.locator(".model")).to_have_text("qwen-test")
    expect(card.locator(".bipolar.valence .score")).to_have_text("+0.90")

    inject(
        alice, event_validator, emotion(first, span1, "bored", 0.9, valence=-0.5, arousal=-0.5, final=False)
    )
    expect(card.locator(".top-label")).to_contain_text("delighted")  # a late fast guess never wins

    inject(
        alice, event_validator, emotion(second, span2, "focused", 0.64, valence=0.1, arousal=0.3, final=False)
    )
    expect(card).to_have_attribute("data-utterance", second)
    expect(card.locator(".top-label")).to_contain_text("focused")
    expect(card.locator(f'.history [data-utterance="{first}"]')).to_have_text("delighted")

    inject(alice, event_validator, face(first, span1, with_macro=True))
    inject(alice, event_validator, face(second, span2, with_macro=False))
    lane = alice.locator('#timeline [data-participant="alice"]')
    for utterance, final in [(first, True), (second, False)]:
        expect(lane.locator(f'.episode.micro[data-utterance="{utterance}"]')).to_have_count(1)
        points = lane.locator(f'.pt.valence[data-utterance="{utterance}"]')
        expect(points).to_have_count(1)
        expect(points).to_have_class(re.compile(r"\bfinal\b") if final else re.compile(r"^(?!.*\bfinal\b)"))
    expect(lane.locator(f'.episode.macro[data-utterance="{first}"]')).to_have_count(1)

    screenshot(alice, "browser-injected.png")


def test_words_so_far_show_greyed_and_a_listeners_reaction_marks_the_speakers_lane(
    alice: Page, event_validator: Any
) -> None:
    end = alice.evaluate(
        "() => Math.max(0, ...[...window.microemo.board.people.get('alice').utterances.values()]"
        ".map(u => u.t1 ?? 0))"
    )
    said, span = "injected-talk", (end + 1.0, end + 7.0)
    line = alice.locator(f'#transcript [data-utterance="{said}"]')

    inject(
        alice, event_validator, utterance(said, (span[0], span[0] + 2.0), "so I was thinking", final=False)
    )
    expect(line).to_have_attribute("data-final", "false")
    expect(line).to_have_class(re.compile(r"\binterim\b"))
    expect(line.locator(".text")).to_have_text("so I was thinking")
    assert line.locator(".text").evaluate("n => getComputedStyle(n).fontStyle") == "italic"
    inject(
        alice,
        event_validator,
        utterance(said, (span[0], span[0] + 4.0), "so I was thinking about the clinic", final=False),
    )
    expect(line).to_have_count(1)  # replaced, not added
    expect(line.locator(".text")).to_have_text("so I was thinking about the clinic")

    closing = "so I was thinking about the clinic in the spring"
    inject(alice, event_validator, utterance(said, span, closing, final=True))
    expect(line).to_have_count(1)
    expect(line).to_have_attribute("data-final", "true")
    expect(line).not_to_have_class(re.compile(r"\binterim\b"))
    expect(line.locator(".text")).to_have_text(closing)
    # a late interim update never replaces the closed utterance
    inject(alice, event_validator, utterance(said, (span[0], span[0] + 2.0), "so I", final=False))
    expect(line.locator(".text")).to_have_text(closing)

    # bob, listening, smiled during it: a dot in bob's colour on alice's lane, saying how he took it
    inject(alice, event_validator, reaction(said, "bob", span))
    lane = alice.locator('#timeline [data-participant="alice"]')
    mark = lane.locator(f'.reaction[data-utterance="{said}"][data-listener="bob"]')
    expect(mark).to_have_count(1)
    expect(mark.locator("title")).to_have_text(
        re.compile(r"^bob reacted: lip_corner_pull · valence \+0\.60 · happy")
    )
    bob_colour = alice.evaluate("() => window.microemo.board.people.get('bob').colour")
    assert mark.locator("circle").get_attribute("fill") == bob_colour
    screenshot(alice, "browser-reaction.png")


def test_errors_and_a_dropped_event_stream_show_in_the_status_banner(
    browser: Browser, server: ServerProcess, event_validator: Any
) -> None:
    connections: list[WebSocketRoute] = []

    def drop_first_connection(ws: WebSocketRoute) -> None:
        connections.append(ws)
        if len(connections) == 1:
            ws.close(code=1011, reason="restarting")
        else:
            ws.connect_to_server()

    page = open_page(browser, server, "browser-banner", "dora")
    page.route_web_socket(re.compile(r"/events\?"), drop_first_connection)
    status = page.locator("#status")
    page.click("#join")
    expect(status).to_contain_text("reconnecting", timeout=10_000)
    expect(status).to_have_attribute("data-level", "warn")
    expect(status).to_contain_text("Live in browser-banner as dora", timeout=30_000)
    assert len(connections) == 2

    error = {
        **event_header("error", "browser-banner", "dora"),
        "code": "asr_overloaded",
        "message": "transcription is 12 s behind",
    }
    event_validator.validate(error)
    page.evaluate("evt => window.microemo.handleEvent(evt)", error)
    expect(page.locator("#errors [data-code='asr_overloaded']")).to_contain_text(
        "transcription is 12 s behind"
    )
    expect(status).to_contain_text("asr_overloaded")
    page.click("#leave")
    close_page(page, "dora")


def test_names_outside_the_id_pattern_are_refused_before_joining(
    browser: Browser, server: ServerProcess
) -> None:
    page = open_page(browser, server, "browser-names", "erin")
    page.fill("#name", "erin smith!")
    page.click("#join")
    assert page.eval_on_selector("#name", "input => input.validationMessage")
    expect(page.locator("#media-state")).to_have_text("idle")
    page.fill("#name", "x" * 65)
    assert page.input_value("#name") == "x" * 64  # maxlength
    page.fill("#call", "")
    page.click("#join")
    assert page.eval_on_selector("#call", "input => input.validationMessage")
    expect(page.locator("#media-state")).to_have_text("idle")
    close_page(page, "erin")


def test_two_participants_in_one_call_each_appear(browser: Browser, server: ServerProcess) -> None:
    bob = open_page(browser, server, "browser-pair", "bob")
    carol = open_page(browser, server, "browser-pair", "carol")
    for page in (bob, carol):
        page.click("#join")
    for page in (bob, carol):
        expect(page.locator("#media-state")).to_have_text("connected", timeout=30_000)
        for name in ("bob", "carol"):
            # one already in the call is known from their first event (join, or speech when they join later)
            expect(page.locator(f'#participants [data-participant="{name}"]')).to_have_attribute(
                "data-presence", "joined", timeout=SLOW_MS
            )
    expect(carol.locator("#participants [data-participant]")).to_have_count(2)
    screenshot(carol, "browser-pair.png")

    bob.click("#leave")
    expect(carol.locator('#participants [data-participant="bob"]')).to_have_attribute(
        "data-presence", "left", timeout=30_000
    )
    expect(carol.locator('#participants [data-participant="carol"]')).to_have_attribute(
        "data-presence", "joined"
    )
    close_page(bob, "bob")
    close_page(carol, "carol")


# -- injected events (until the server emits them), checked against the schema like real ones ------------
def emotion(
    utterance: str,
    span: tuple[float, float],
    label: str,
    score: float,
    *,
    valence: float,
    arousal: float,
    final: bool,
) -> dict[str, Any]:
    return {
        **event_header("emotion", "browser-solo", "alice"),
        "utterance": utterance,
        "t0": span[0],
        "t1": span[1],
        "labels": [{"label": label, "score": score}, {"label": "calm", "score": round(1 - score, 2)}],
        "valence": valence,
        "arousal": arousal,
        "explanation": f"{label}: warm words, a rising voice and a smile at the apex",
        "clues": {"visual": {"smile": 0.7}, "audio": {"pitch_z": 1.2}, "text": {"polarity": 0.8}},
        "final": final,
        "model": "qwen-test" if final else "fast-test",
    }


def face(utterance: str, span: tuple[float, float], with_macro: bool) -> dict[str, Any]:
    t0, t1 = span
    apex = (t0 + t1) / 2
    micro = [
        {
            "region": "mouth",
            "onset": apex - 0.15,
            "apex": apex,
            "offset": apex + 0.2,
            "intensity": 0.8,
            "kind": "micro",
        }
    ]
    if with_macro:
        micro.append(
            {
                "region": "brows",
                "onset": t0,
                "apex": t0 + 0.6,
                "offset": t0 + 1.4,
                "intensity": 0.4,
                "kind": "macro",
            }
        )
    return {
        **event_header("face", "browser-solo", "alice"),
        "utterance": utterance,
        "t0": t0,
        "t1": t1,
        "track": 1,
        "present": 0.97,
        "regions": {"mouth": {"motion": 0.4}, "brows": {"motion": 0.1}},
        "micro": micro,
    }


def utterance(said: str, span: tuple[float, float], text: str, *, final: bool) -> dict[str, Any]:
    event = {
        **event_header("utterance", "browser-solo", "alice", v=2),
        "utterance": said,
        "t0": span[0],
        "t1": span[1],
        "text": text,
        "words": [],
        "lang": "en",
        "final": final,
    }
    return {**event, "closed_by": "silence"} if final else event


def reaction(said: str, listener: str, span: tuple[float, float]) -> dict[str, Any]:
    t0, t1 = span
    smile = {"region": "lip_corner_pull", "onset": t0 + 1, "apex": t0 + 2, "offset": t0 + 3, "intensity": 0.3}
    return {
        **event_header("reaction", "browser-solo", listener, v=2),
        "utterance": said,
        "speaker": "alice",
        "t0": t0,
        "t1": t1,
        "track": 0,
        "present": 0.98,
        "regions": {"lip_corner_pull": {"mean": 0.1, "max": 0.3, "std": 0.1}},
        "micro": [{**smile, "kind": "macro"}],
        "valence": 0.6,
        "arousal": 0.2,
        "labels": [{"label": "happy", "score": 0.6}, {"label": "amused", "score": 0.4}],
    }


def event_header(type_: str, call: str, participant: str, v: int = 1) -> dict[str, Any]:
    return {"type": type_, "v": v, "call": call, "participant": participant, "seq": 10_000, "ts": time.time()}


def inject(page: Page, event_validator: Any, event: dict[str, Any]) -> None:
    event_validator.validate(event)
    assert page.evaluate("evt => window.microemo.handleEvent(evt)", event) is True
