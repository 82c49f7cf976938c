// The call board: turns the server's events (API.md) into participants, transcript, emotions and errors.
// Every event, from the websocket or injected by a test, goes through CallBoard.handleEvent.

import { clock, colourOf, el, seconds, signed, span } from "./format.js";
import { Timeline } from "./timeline.js";

const MAX_ERRORS = 6;
const MAX_TRANSCRIPT_LINES = 400;

/** One participant as the board knows it. */
class Person {
  constructor(id, order) {
    this.id = id;
    this.order = order; // first-seen order, for stable layout
    this.colour = colourOf(order);
    this.presence = "seen"; // seen (events but no join yet) | joined | left
    this.tracks = [];
    this.reason = null;
    this.speaking = false;
    this.speechSince = null;
    this.utterances = new Map(); // utterance id -> {id, t0, t1, text, order}
    this.emotions = new Map(); // utterance id -> emotion event (final wins)
    this.faces = new Map(); // utterance id -> face event
    this.reactions = new Map(); // utterance id -> Map(listener id -> reaction event): how others took it
    this.latestEmotion = null; // utterance id shown in "Emotion now"
  }

  utteranceOrder(id) {
    if (!this.utterances.has(id)) this.utterances.set(id, { id, order: this.utterances.size });
    return this.utterances.get(id).order;
  }
}

export class CallBoard {
  /** @param {{participants, transcript, emotions, timeline, errors}} nodes  @param {(evt) => void} onChange */
  constructor(nodes, onChange = () => {}) {
    this.nodes = nodes;
    this.onChange = onChange;
    this.timeline = new Timeline(nodes.timeline);
    this.reset(null);
  }

  /** Forget everything (a different call). `self` is our own participant id, if we publish. */
  reset(call, self = null) {
    this.call = call;
    this.self = self;
    this.people = new Map();
    this.errors = []; // {code, message, participant, ts}
    this.counts = { events: 0, utterances: 0, emotions: 0, faces: 0, reactions: 0 };
    for (const key of ["participants", "emotions"]) this.nodes[key].replaceChildren();
    this.nodes.transcript.replaceChildren(el("li", { class: "empty" }, "Words appear here as each utterance closes."));
    this.nodes.emotions.append(el("p", { class: "empty" }, "Each participant's latest emotion appears here."));
    this.nodes.errors.replaceChildren();
    this.timeline.reset();
  }

  setSelf(id) {
    this.self = id;
    for (const person of this.people.values()) this.renderPerson(person);
  }

  person(id) {
    if (!this.people.has(id)) {
      const person = new Person(id, this.people.size);
      this.people.set(id, person);
      this.renderPerson(person);
    }
    return this.people.get(id);
  }

  /** The one entry point for events; unknown types are ignored so newer servers don't break the page. */
  handleEvent(evt) {
    if (!evt || typeof evt !== "object" || typeof evt.type !== "string") return false;
    if (this.call && evt.call && evt.call !== this.call) return false;
    this.counts.events += 1;
    const handler = {
      "participant.join": this.onJoin,
      "participant.leave": this.onLeave,
      "speech.start": this.onSpeechStart,
      "speech.end": this.onSpeechEnd,
      utterance: this.onUtterance,
      emotion: this.onEmotion,
      face: this.onFace,
      reaction: this.onReaction,
      error: this.onError,
    }[evt.type];
    if (!handler || (evt.type !== "error" && typeof evt.participant !== "string")) return false;
    handler.call(this, evt);
    this.onChange(evt);
    return true;
  }

  // -- presence ------------------------------------------------------------------------------------
  onJoin(evt) {
    const person = this.person(evt.participant);
    Object.assign(person, { presence: "joined", tracks: evt.tracks || [], reason: null });
    this.renderPerson(person);
    this.notice(evt, `${evt.participant} joined with ${(evt.tracks || []).join(" and ") || "no tracks"}`);
  }

  onLeave(evt) {
    const person = this.person(evt.participant);
    Object.assign(person, { presence: "left", reason: evt.reason || "gone", speaking: false });
    this.renderPerson(person);
    this.dropPending(person);
    this.notice(evt, `${evt.participant} left (${person.reason})`);
  }

  // -- speech ----------------------------------------------------------------------------------------
  onSpeechStart(evt) {
    const person = this.person(evt.participant);
    if (person.presence === "seen") person.presence = "joined";
    person.speaking = true;
    person.speechSince = evt.t0;
    this.renderPerson(person);
    this.showPending(person);
    this.timeline.speaking(person, evt.t0, null);
  }

  onSpeechEnd(evt) {
    const person = this.person(evt.participant);
    person.speaking = false;
    this.renderPerson(person);
    this.timeline.speaking(person, evt.t0, evt.t1);
  }

  // -- transcript ------------------------------------------------------------------------------------
  /** An utterance still open (final: false) shows its words so far, greyed; the closing one replaces it. */
  onUtterance(evt) {
    const person = this.person(evt.participant);
    person.utteranceOrder(evt.utterance);
    const known = person.utterances.get(evt.utterance);
    const interim = evt.final === false;
    if (interim && known.final) return; // the closed utterance is already shown
    Object.assign(known, { t0: evt.t0, t1: evt.t1, text: evt.text, final: !interim });
    if (!interim) this.counts.utterances += 1;
    this.dropPending(person);
    const words = (evt.words || []).map((w) => `${String(w.word).trim()} ${seconds(w.start)} p=${Number(w.prob).toFixed(2)}`);
    const line = el(
      "li",
      {
        class: "line" + (evt.continues ? " continues" : "") + (interim ? " interim" : ""),
        dataset: { participant: evt.participant, utterance: evt.utterance, final: String(!interim) },
        title: interim ? "still speaking: the words so far" : null,
        style: `--who: ${person.colour}`,
      },
      el("span", { class: "who" }, evt.participant),
      el("span", { class: "when" }, span(evt.t0, evt.t1)),
      el("span", { class: "text", title: words.join("\n") || null }, String(evt.text ?? "").trim() || "(no words)"),
    );
    this.appendLine(line, evt.utterance);
    this.tagLine(person, evt.utterance);
    this.timeline.update(person);
  }

  showPending(person) {
    this.dropPending(person);
    this.appendLine(
      el(
        "li",
        { class: "line pending", dataset: { pending: person.id }, style: `--who: ${person.colour}` },
        el("span", { class: "who" }, person.id),
        el("span", { class: "when" }, seconds(person.speechSince)),
        el("span", { class: "text" }, el("i", { class: "typing" }, el("b"), el("b"), el("b"))),
      ),
    );
  }

  dropPending(person) {
    for (const node of this.nodes.transcript.querySelectorAll("[data-pending]")) {
      if (node.dataset.pending === person.id) node.remove();
    }
  }

  notice(evt, text) {
    this.appendLine(
      el("li", { class: "notice", dataset: { about: evt.participant || "" } }, el("span", { class: "when" }, clock(evt.ts)), text),
    );
  }

  appendLine(line, utteranceId = null) {
    const list = this.nodes.transcript;
    const pinned = list.scrollTop + list.clientHeight >= list.scrollHeight - 24;
    list.querySelector(".empty")?.remove();
    const existing = utteranceId && [...list.querySelectorAll("[data-utterance]")].find((n) => n.dataset.utterance === utteranceId);
    if (existing) existing.replaceWith(line);
    else list.insertBefore(line, list.querySelector("[data-pending]"));
    while (list.children.length > MAX_TRANSCRIPT_LINES) list.firstElementChild.remove();
    if (pinned) list.scrollTop = list.scrollHeight;
  }

  // -- emotion and face ------------------------------------------------------------------------------
  onEmotion(evt) {
    const person = this.person(evt.participant);
    const earlier = person.emotions.get(evt.utterance);
    if (earlier?.final && !evt.final) return; // a late fast guess never replaces the refined one
    person.emotions.set(evt.utterance, evt);
    this.counts.emotions += 1;
    const order = person.utteranceOrder(evt.utterance);
    const shown = person.latestEmotion && person.utterances.get(person.latestEmotion)?.order;
    if (person.latestEmotion === null || order >= shown) person.latestEmotion = evt.utterance;
    this.renderEmotion(person); // the card with its history chips
    this.tagLine(person, evt.utterance);
    this.timeline.update(person);
  }

  onFace(evt) {
    const person = this.person(evt.participant);
    person.utteranceOrder(evt.utterance);
    const earlier = person.faces.get(evt.utterance);
    if (evt.final === false && earlier && earlier.final !== false) return; // the closed utterance's face stands
    person.faces.set(evt.utterance, evt);
    if (evt.final !== false) this.counts.faces += 1;
    this.renderPerson(person);
    this.timeline.update(person);
  }

  /** A listener's face over someone else's utterance: marked on the speaker's lane. */
  onReaction(evt) {
    if (typeof evt.speaker !== "string") return;
    const listener = this.person(evt.participant);
    const speaker = this.person(evt.speaker);
    speaker.utteranceOrder(evt.utterance);
    if (!speaker.reactions.has(evt.utterance)) speaker.reactions.set(evt.utterance, new Map());
    speaker.reactions.get(evt.utterance).set(listener.id, { ...evt, colour: listener.colour });
    this.counts.reactions = (this.counts.reactions || 0) + 1;
    this.timeline.update(speaker);
  }

  renderEmotion(person) {
    const evt = person.emotions.get(person.latestEmotion);
    const labels = [...(evt.labels || [])].sort((a, b) => b.score - a.score);
    const top = labels[0];
    const utterance = person.utterances.get(evt.utterance);
    const t0 = evt.t0 ?? utterance?.t0;
    const t1 = evt.t1 ?? utterance?.t1;
    const clues = Object.entries(evt.clues || {})
      .filter(([, value]) => value)
      .map(([kind]) => kind);
    const card = el(
      "article",
      {
        class: "emotion",
        dataset: { participant: person.id, utterance: evt.utterance, final: String(Boolean(evt.final)) },
        title: evt.explanation || "no explanation",
        style: `--who: ${person.colour}`,
      },
      el(
        "header",
        {},
        el("span", { class: "who" }, person.id),
        el("span", { class: "badge " + (evt.final ? "final" : "fast") }, badge(evt, utterance)),
      ),
      el("p", { class: "top-label" }, top ? top.label : "–", el("small", {}, top ? ` ${Math.round(top.score * 100)}%` : "")),
      el(
        "ul",
        { class: "labels" },
        ...labels.slice(0, 5).map((label) =>
          el(
            "li",
            { dataset: { label: label.label } },
            el("span", { class: "label" }, label.label),
            el("span", { class: "bar" }, el("i", { style: `width: ${Math.max(0, Math.min(1, label.score)) * 100}%` })),
            el("span", { class: "score" }, label.score.toFixed(2)),
          ),
        ),
      ),
      el("div", { class: "va" }, bipolar("valence", evt.valence), bipolar("arousal", evt.arousal)),
      this.history(person),
      el(
        "footer",
        {},
        el("span", { class: "model" }, evt.model || "?"),
        el("span", {}, span(t0, t1)),
        clues.length ? el("span", {}, `clues: ${clues.join(", ")}`) : null,
        el("span", { class: "why", "aria-hidden": "true" }, "why?"),
      ),
    );
    const old = [...this.nodes.emotions.children].find((n) => n.dataset.participant === person.id);
    this.nodes.emotions.querySelector(".empty")?.remove();
    if (old) old.replaceWith(card);
    else this.insertOrdered(this.nodes.emotions, card, person);
  }

  /** The top label of each earlier utterance, newest first. */
  history(person) {
    const earlier = [...person.utterances.values()]
      .filter((u) => u.id !== person.latestEmotion && person.emotions.has(u.id))
      .sort((a, b) => b.order - a.order)
      .slice(0, 6);
    if (!earlier.length) return null;
    return el(
      "ol",
      { class: "history", "aria-label": "earlier utterances" },
      el("li", { class: "caption" }, "before:"),
      ...earlier.map((u) => {
        const e = person.emotions.get(u.id);
        return el("li", { dataset: { utterance: u.id, final: String(Boolean(e.final)) }, title: u.text || "" }, topLabel(e)?.label ?? "–");
      }),
    );
  }

  /** Tag a transcript line with its utterance's top emotion label. */
  tagLine(person, utteranceId) {
    const evt = person.emotions.get(utteranceId);
    const line = [...this.nodes.transcript.querySelectorAll("[data-utterance]")].find(
      (n) => n.dataset.utterance === utteranceId && n.dataset.participant === person.id,
    );
    if (!evt || !line) return;
    line.querySelector(".tag")?.remove();
    const top = topLabel(evt);
    line.append(el("span", { class: "tag" + (evt.final ? " final" : ""), title: evt.explanation || "" }, top ? top.label : "–"));
  }

  // -- errors ----------------------------------------------------------------------------------------
  onError(evt) {
    this.errors.unshift({ code: evt.code, message: evt.message, participant: evt.participant, ts: evt.ts ?? Date.now() / 1000 });
    this.errors.length = Math.min(this.errors.length, MAX_ERRORS);
    this.nodes.errors.replaceChildren(
      ...this.errors.map((e) =>
        el(
          "li",
          { dataset: { code: e.code } },
          el("span", { class: "when" }, clock(e.ts)),
          el("code", {}, e.code),
          e.participant ? el("span", { class: "who" }, e.participant) : null,
          el("span", {}, e.message),
        ),
      ),
    );
  }

  // -- participants ----------------------------------------------------------------------------------
  renderPerson(person) {
    const faces = [...person.faces.values()];
    const episodes = faces.flatMap((f) => f.micro || []);
    const macro = episodes.filter((m) => m.kind === "macro").length;
    const micro = episodes.length - macro;
    const present = faces.length ? faces[faces.length - 1].present : null;
    const state =
      person.presence === "left" ? `left · ${person.reason}` : person.speaking ? "speaking" : person.presence === "joined" ? "listening" : "seen";
    const card = el(
      "li",
      {
        class: "person",
        dataset: { participant: person.id, presence: person.presence, speaking: String(person.speaking) },
        style: `--who: ${person.colour}`,
      },
      el("span", { class: "avatar", "aria-hidden": "true" }, person.id.slice(0, 1).toUpperCase()),
      el(
        "span",
        { class: "name" },
        person.id,
        person.id === this.self ? el("small", { class: "you" }, " (you)") : null,
        el("small", { class: "meta" }, [person.tracks.join(" + "), present !== null ? `face ${Math.round(present * 100)}%` : "", micro ? `${micro} micro` : "", macro ? `${macro} macro` : ""].filter(Boolean).join(" · ")),
      ),
      el("span", { class: "activity", title: "speech activity" }, el("i", { class: "dot" }), state),
    );
    const old = [...this.nodes.participants.children].find((n) => n.dataset.participant === person.id);
    if (old) old.replaceWith(card);
    else this.insertOrdered(this.nodes.participants, card, person);
  }

  insertOrdered(list, node, person) {
    const after = [...list.children].find((n) => (this.people.get(n.dataset.participant)?.order ?? -1) > person.order);
    list.insertBefore(node, after || null);
  }
}

/** A -1..1 value as a centred bar. */
function bipolar(name, value) {
  const v = typeof value === "number" ? Math.max(-1, Math.min(1, value)) : 0;
  const left = v < 0 ? 50 + v * 50 : 50;
  return el(
    "div",
    { class: `bipolar ${name}`, dataset: { [name]: String(value) } },
    el("span", { class: "label" }, name),
    el("span", { class: "track" }, el("i", { style: `left: ${left}%; width: ${Math.abs(v) * 50}%` })),
    el("span", { class: "score" }, signed(value)),
  );
}

function topLabel(evt) {
  return [...(evt.labels || [])].sort((a, b) => b.score - a.score)[0];
}

/** What an emotion card's badge says: refined, a fast guess the LLM will refine, or a reading of speech so far. */
function badge(evt, utterance) {
  if (evt.final) return "final";
  return utterance?.final === false ? "so far (still speaking…)" : "fast guess (refining…)";
}
