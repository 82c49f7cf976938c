"""Prometheus metrics of the service (served at GET /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

PARTICIPANTS = Gauge("microemo_participants", "Participants connected now", registry=REGISTRY)
CALLS = Gauge("microemo_calls", "Calls with at least one participant now", registry=REGISTRY)
EVENTS = Counter("microemo_events_total", "Events published", ["type"], registry=REGISTRY)
SUBSCRIBERS_CUT = Counter(
    "microemo_subscribers_cut_total", "Websocket subscribers cut off for falling behind", registry=REGISTRY
)
EVENTS_REPLAYED = Counter(
    "microemo_events_replayed_total",
    "Held events read again for websocket subscribers that resumed with since= (before their type filter)",
    registry=REGISTRY,
)
RESUMES = Counter(
    "microemo_resumes_total",
    "Websocket subscribers that resumed with since=: complete (nothing missing) or history_gone (told of a gap)",
    ["outcome"],
    registry=REGISTRY,
)
ASR_COMPUTE = Histogram(
    "microemo_asr_compute_seconds",
    "Compute time of one transcription",
    buckets=(0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4),
    registry=REGISTRY,
)
ASR_AUDIO = Counter("microemo_asr_audio_seconds_total", "Seconds of audio transcribed", registry=REGISTRY)
ASR_BACKLOG = Gauge("microemo_asr_backlog", "Utterances waiting for transcription", registry=REGISTRY)
ASR_BATCH = Histogram(
    "microemo_asr_batch_size",
    "Transcriptions encoded together in one batch (audio.asr.batch > 1; a single one is not counted)",
    buckets=(2, 4, 8, 16, 32),
    registry=REGISTRY,
)
STAGE_LATENCY = Histogram(
    "microemo_stage_latency_seconds",
    "From the end of an utterance's speech (wall clock) to its event",
    ["stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
    registry=REGISTRY,
)
MQTT_QUEUE = Gauge("microemo_mqtt_queue", "Events waiting for the MQTT broker", registry=REGISTRY)
MQTT_DROPPED = Counter(
    "microemo_mqtt_dropped_total",
    "Events dropped because the MQTT broker was away too long",
    registry=REGISTRY,
)
DROPPED_FRAMES = Counter(
    "microemo_dropped_frames_total",
    "Video frames dropped because face analysis fell behind",
    registry=REGISTRY,
)
FACE_FAILURES = Counter(
    "microemo_face_failures_total",
    "Video frames whose face analysis raised (the frame was skipped)",
    registry=REGISTRY,
)
FACE_PROCESSES_LOST = Counter(
    "microemo_face_processes_lost_total",
    "Face-analysis child processes that died or hung and were replaced (stream/faces/face_process.py)",
    registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "microemo_stage_seconds",
    "Compute time of one run of a stage (faces: per analysed frame)",
    ["stage"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
    registry=REGISTRY,
)
LLM_FAILURES = Counter(
    "microemo_llm_failures_total",
    "LLM refinements that failed (the fast estimate was kept as final)",
    registry=REGISTRY,
)
LLM_SKIPPED = Counter(
    "microemo_llm_skipped_total",
    "Utterances not refined because the LLM backlog was full",
    registry=REGISTRY,
)
INTERIM_SKIPPED = Counter(
    "microemo_interim_skipped_total",
    "Interim updates of open utterances skipped because final work was waiting or running (interim backend "
    "'same'), because a newer one of the same speaker replaced it while it waited for the interim worker, or "
    "(emotion) because the emotion service was busy",
    ["event"],
    registry=REGISTRY,
)
MEDIA_STALLS = Counter(
    "microemo_media_stalls_total",
    "Tracks whose frames stopped arriving while their peer stayed connected (audio: the open speech was closed)",
    ["kind"],
    registry=REGISTRY,
)
PHONE_CHUNKS = Counter(
    "microemo_phone_chunks_total",
    "Phone media chunks not analysed in place: late (came after their place had passed, or twice, and were "
    "dropped) or lost (never came; their time is silence)",
    ["outcome"],
    registry=REGISTRY,
)
PHONE_STREAM_ERRORS = Counter(
    "microemo_phone_stream_errors_total",
    "Phone media websockets closed on a bad message or a refusal, by error code",
    ["code"],
    registry=REGISTRY,
)
REACTIONS = Counter(
    "microemo_reactions_total",
    "Listeners' reactions published (one per listener per utterance)",
    registry=REGISTRY,
)
OFFERS_REFUSED = Counter(
    "microemo_offers_refused_total",
    "Offers refused before any WebRTC work: too_many_offers (per client, 429), busy (in total, 503)",
    ["reason"],
    registry=REGISTRY,
)
LOOP_LAG = Histogram(
    "microemo_loop_lag_seconds",
    "How late the event loop ran a timer due every 100 ms: VAD and speech.end wait as long",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
    registry=REGISTRY,
)
AUDIO_LAG = Histogram(
    "microemo_audio_lag_seconds",
    "How late each 32 ms of audio reaches the VAD, after the participant's first frame set the clock: "
    "speech.end comes this much later than min_silence",
    buckets=(0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0),
    registry=REGISTRY,
)
SHED = Counter(
    "microemo_shed_total",
    "Work shed because the event loop lagged (face_frames: sampled frames not analysed; interim: interim "
    "transcripts not made)",
    ["work"],
    registry=REGISTRY,
)
FACE_SHARE = Gauge(
    "microemo_face_share", "Share of the sampled face frames analysed now (1: none shed)", registry=REGISTRY
)
FACE_SHARE.set(1.0)
