// The call page: join form, our own media, the event stream, server health and the status banner.
// Tests and the console can drive it through window.microemo (handleEvent, join, leave, board).

import { CallBoard } from "./board.js";
import { JoinError, openMedia, publish } from "./call.js";
import { EventStream } from "./events.js";
import { el, ID_PATTERN } from "./format.js";

const HEALTH_EVERY_MS = 4000;
const EVENTS_OPEN_WAIT_MS = 3000;
const HEALTH_TIMEOUT_MS = 3000;
const RECENT_ERROR_S = 60;
const HEALTHY_STATES = ["ready", "ok", "running", "connected", "disabled"];
const $ = (id) => document.getElementById(id);

const ui = {
  form: $("join-form"),
  call: $("call"),
  name: $("name"),
  token: $("token"),
  join: $("join"),
  leave: $("leave"),
  video: $("local-video"),
  selfLabel: $("self-label"),
  media: $("media-state"),
  status: $("status"),
  statusText: $("status-text"),
  health: $("health"),
};

const board = new CallBoard(
  { participants: $("participants"), transcript: $("transcript"), emotions: $("emotions"), timeline: $("timeline"), errors: $("errors") },
  onBoardEvent,
);

const state = {
  call: null, // the call whose events we follow
  participant: null, // our id while we publish
  media: "idle", // idle | joining | new | connecting | connected | disconnected | failed | closed
  stream: null,
  pc: null,
  session: null,
  events: null,
  ws: { state: "closed" },
  missed: 0,
  joinError: null,
  joinSeen: false, // our participant.join for the current session has arrived
  ended: null, // why the server ended our session, when it did
  health: { reachable: null, status: null, stages: {}, degraded: null, auth: null, error: null }, // error: why unreachable
};

/** The server may end our session itself (shutdown, timeout, error): then hang up here too. */
function onBoardEvent(evt) {
  if (state.participant && evt.participant === state.participant) {
    // A leave counts only after this session's join: a late leave of our previous session must not end this one.
    if (evt.type === "participant.join") state.joinSeen = true;
    else if (evt.type === "participant.leave" && state.joinSeen && state.pc) {
      state.ended = evt.reason;
      leave();
    }
  }
  renderStatus();
}

// -- join and leave ----------------------------------------------------------------------------------
async function join({ call, participant, token }) {
  if (!ID_PATTERN.test(call) || !ID_PATTERN.test(participant)) {
    throw new JoinError("bad_id", "call and name must be 1–64 letters, digits, _ or -");
  }
  if (state.pc) leave(); // a failed connection still holds its camera
  Object.assign(state, { joinError: null, ended: null, joinSeen: false, participant });
  setMedia("joining");
  follow(call, token, participant);
  try {
    // Subscribe first so that our own participant.join is on the board; never wait long for it though.
    await Promise.race([state.events.opened, new Promise((resolve) => setTimeout(resolve, EVENTS_OPEN_WAIT_MS))]);
    state.stream = await openMedia();
    ui.video.srcObject = state.stream;
    const { pc, session } = await publish(state.stream, { call, participant, token, onState: setMedia });
    Object.assign(state, { pc, session });
    ui.selfLabel.textContent = `${participant} in ${call}`;
    history.replaceState(null, "", `?${new URLSearchParams({ call, name: participant })}`);
  } catch (err) {
    stopMedia();
    state.participant = null;
    state.joinError = err instanceof JoinError ? err : new JoinError("join_failed", String(err));
    setMedia("idle");
    throw state.joinError;
  }
}

/** Hang up: close the peer connection and release camera and microphone; keep following the call's events. */
function leave() {
  state.pc?.close();
  stopMedia();
  state.participant = null;
  setMedia("idle");
}

function stopMedia() {
  state.stream?.getTracks().forEach((track) => track.stop());
  Object.assign(state, { stream: null, pc: null, session: null });
  ui.video.srcObject = null;
  ui.selfLabel.textContent = "You are not connected";
}

/** Subscribe to a call's events; joining another call starts a fresh board. */
function follow(call, token, self) {
  if (state.call === call && state.events && state.events.token === token) {
    board.setSelf(self);
    return;
  }
  state.events?.close();
  if (state.call !== call) board.reset(call, self);
  else board.setSelf(self);
  state.call = call;
  state.missed = 0;
  state.events = new EventStream({
    call,
    token,
    onEvent: (evt) => board.handleEvent(evt),
    onState: (ws) => {
      state.ws = ws.state === "reconnecting" ? { ...ws, retryAt: Date.now() + ws.retryInS * 1000 } : ws;
      renderStatus();
    },
    onGap: (missed) => {
      state.missed += missed;
      renderStatus();
    },
  });
}

function setMedia(media) {
  state.media = media;
  ui.media.textContent = media;
  ui.media.dataset.state = media;
  const inCall = !["idle", "closed", "failed"].includes(media);
  ui.join.disabled = inCall;
  ui.leave.disabled = !inCall;
  for (const input of [ui.call, ui.name, ui.token]) input.disabled = inCall;
  renderStatus();
}

// -- server health -----------------------------------------------------------------------------------
async function pollHealth() {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), HEALTH_TIMEOUT_MS);
  const token = ui.token.value.trim();
  try {
    const response = await fetch("/healthz", { signal: abort.signal, headers: token ? { Authorization: `Bearer ${token}` } : {} });
    const body = await response.json().catch(() => ({}));
    const wasDown = state.health.reachable === false;
    state.health = {
      reachable: true,
      error: null,
      status: response.ok ? body.status : `HTTP ${response.status}`,
      stages: body.stages || {},
      degraded: body.degraded,
      auth: body.auth,
    };
    ui.token.placeholder = body.auth ? "required" : "not needed";
    if (wasDown) state.events?.hurry();
  } catch (err) {
    state.health = { ...state.health, reachable: false, error: err.name === "AbortError" ? "no answer in 3 s" : err.message };
  } finally {
    clearTimeout(timer);
  }
  renderHealth();
  renderStatus();
}

function stageIsHealthy(name, stage) {
  if (Array.isArray(state.health.degraded)) return !state.health.degraded.includes(name); // the server's own verdict
  return HEALTHY_STATES.includes(String(stage?.state ?? "ready").toLowerCase());
}

function renderHealth() {
  const { stages, reachable } = state.health;
  ui.health.replaceChildren(
    ...Object.entries(stages).map(([name, stage]) => {
      const detail = Object.entries(stage)
        .filter(([key]) => key !== "state")
        .map(([key, value]) => `${key}: ${typeof value === "object" ? JSON.stringify(value) : value}`)
        .join("\n");
      const backlog = typeof stage.backlog === "number" && stage.backlog > 0 ? ` (${stage.backlog})` : "";
      return el(
        "li",
        { dataset: { stage: name, state: reachable === false ? "unknown" : stage.state, healthy: String(reachable !== false && stageIsHealthy(name, stage)) }, title: detail },
        `${name} ${stage.state}${backlog}`,
      );
    }),
  );
}

// -- the banner ----------------------------------------------------------------------------------------
function renderStatus() {
  const [level, text] = statusLine();
  const missed = state.missed ? ` · ${state.missed} events missed while disconnected` : "";
  ui.status.dataset.level = level;
  ui.statusText.textContent = text + missed;
}

function statusLine() {
  const { health, ws, media, call, participant } = state;
  const degraded = Object.entries(health.stages).filter(([name, stage]) => !stageIsHealthy(name, stage));
  const now = Date.now() / 1000;
  const recent = board.errors.find((e) => now - e.ts < RECENT_ERROR_S);
  if (state.joinError) return ["error", `Could not join: ${state.joinError.code} — ${state.joinError.message}`];
  if (health.reachable === false) return ["error", `Server unreachable: /healthz ${health.error}`];
  if (ws.state === "reconnecting" && ws.refused) {
    return ["error", `Events refused: ${ws.refused.code} — ${ws.refused.message}${health.auth && !ui.token.value ? " (enter a token)" : ""}`];
  }
  if (ws.state === "reconnecting") {
    const why = ws.code && ws.code !== 1006 ? ` (${ws.code}${ws.reason ? ` ${ws.reason}` : ""})` : "";
    const inS = Math.max(0, Math.ceil((ws.retryAt - Date.now()) / 1000));
    return ["warn", `Event stream closed${why} — reconnecting ${inS ? `in ${inS} s` : "now"} (attempt ${ws.attempt})`];
  }
  if (state.ended) return ["warn", `The server ended your session (${state.ended}) — join again to continue`];
  if (media === "failed") return ["error", "Media connection failed — leave and join again"];
  if (media === "disconnected") return ["warn", "Media connection interrupted — waiting for it to recover"];
  if (degraded.length) return ["warn", `Degraded: ${degraded.map(([name, stage]) => `${name} ${stage.state}`).join(", ")}`];
  if (health.status && health.status !== "ok") return ["warn", `Server status: ${health.status}`];
  if (recent) return ["warn", `Server error ${recent.code}: ${recent.message}`];
  if (media === "joining" || media === "new" || media === "connecting") return ["busy", `Joining call ${call}…`];
  if (ws.state === "connecting") return ["busy", `Connecting to the events of ${call}…`];
  const people = [...board.people.values()].filter((p) => p.presence !== "left").length;
  if (participant && media === "connected") return ["ok", `Live in ${call} as ${participant} · ${people} in the call · analysis running`];
  if (call && ws.state === "open") return ["ok", `Following ${call} (not publishing) · ${people} in the call`];
  return ["idle", health.reachable ? "Not in a call · server ready" : "Not in a call"];
}

// -- wiring ---------------------------------------------------------------------------------------------
function validate(input) {
  const value = input.value.trim();
  input.setCustomValidity(ID_PATTERN.test(value) ? "" : "1–64 letters, digits, _ or -");
  return input.reportValidity() ? value : null;
}

ui.form.addEventListener("submit", async (submit) => {
  submit.preventDefault();
  const call = validate(ui.call);
  const participant = call && validate(ui.name);
  if (!participant) return;
  try {
    await join({ call, participant, token: ui.token.value.trim() || undefined });
  } catch (err) {
    console.error("join failed", err);
  }
});
ui.leave.addEventListener("click", leave);
for (const input of [ui.call, ui.name]) input.addEventListener("input", () => input.setCustomValidity(""));
window.addEventListener("pagehide", () => state.pc?.close());

const params = new URLSearchParams(location.search);
for (const [key, input] of [
  ["call", ui.call],
  ["name", ui.name],
]) {
  if (params.has(key)) input.value = params.get(key);
}

pollHealth();
setInterval(pollHealth, HEALTH_EVERY_MS);
setInterval(renderStatus, 1000); // expire old errors from the banner

window.microemo = {
  handleEvent: (evt) => board.handleEvent(evt),
  join,
  leave,
  board,
  state,
};
