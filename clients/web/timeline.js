// Valence/arousal per utterance and face micro-expressions, one SVG lane per participant (own media time axis,
// since each participant's t0/t1 count from that participant's first frame).

import { el, seconds, signed, svg } from "./format.js";

const HEIGHT = 132;
const MARGIN = { left: 40, right: 12, top: 10, bottom: 34 }; // the bottom strip holds face episodes and ticks
const WINDOW_S = 90; // the lane shows the latest 90 s of media time

export class Timeline {
  constructor(container) {
    this.container = container;
    this.lanes = new Map(); // participant id -> {node, person, speech: {t0, t1}|null}
    this.dirty = new Set();
    this.timer = null;
    new ResizeObserver(() => this.lanes.forEach((_, id) => this.mark(id))).observe(container);
  }

  reset() {
    this.lanes.clear();
    this.dirty.clear();
    this.container.replaceChildren(el("p", { class: "empty" }, "Valence and arousal per utterance, with face micro-expressions."));
  }

  update(person) {
    this.lane(person);
    this.mark(person.id);
  }

  /** An open speech segment (t1 null) is drawn as a live band until speech.end closes it. */
  speaking(person, t0, t1) {
    this.lane(person).speech = { t0, t1 };
    this.mark(person.id);
  }

  lane(person) {
    if (!this.lanes.has(person.id)) {
      this.container.querySelector(".empty")?.remove();
      const node = el("div", { class: "lane", dataset: { participant: person.id }, style: `--who: ${person.colour}` });
      this.container.append(node);
      this.lanes.set(person.id, { node, person, speech: null });
    }
    return this.lanes.get(person.id);
  }

  mark(id) {
    this.dirty.add(id);
    // Batched with a timer, not requestAnimationFrame, so hidden tabs still keep up.
    this.timer ??= setTimeout(() => {
      this.timer = null;
      for (const dirty of this.dirty) if (this.lanes.has(dirty)) this.render(this.lanes.get(dirty));
      this.dirty.clear();
    }, 40);
  }

  render({ node, person, speech }) {
    const width = Math.max(320, Math.floor(this.container.clientWidth || 640));
    const points = [...person.utterances.values()]
      .map((u) => {
        const emotion = person.emotions.get(u.id);
        const t0 = emotion?.t0 ?? u.t0;
        const t1 = emotion?.t1 ?? u.t1;
        return { ...u, t0, t1, emotion, face: person.faces.get(u.id) };
      })
      .filter((u) => typeof u.t0 === "number" && typeof u.t1 === "number")
      .sort((a, b) => a.t0 - b.t0);
    const episodes = points.flatMap((u) => (u.face?.micro || []).map((m) => ({ ...m, utterance: u.id })));

    const latest = Math.max(10, speech?.t1 ?? speech?.t0 ?? 0, ...points.map((u) => u.t1), ...episodes.map((m) => m.offset));
    const x1 = latest + 2;
    const x0 = Math.max(0, x1 - WINDOW_S);
    const plotW = width - MARGIN.left - MARGIN.right;
    const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
    const x = (t) => MARGIN.left + ((t - x0) / (x1 - x0)) * plotW;
    const y = (v) => MARGIN.top + ((1 - v) / 2) * plotH;
    const stripY = MARGIN.top + plotH + 10;

    const chart = svg("svg", { width, height: HEIGHT, viewBox: `0 0 ${width} ${HEIGHT}`, role: "img", "aria-label": `timeline of ${person.id}` });
    // axes: -1, 0, +1 and time ticks
    for (const v of [1, 0, -1]) {
      chart.append(svg("line", { class: v === 0 ? "axis zero" : "axis", x1: MARGIN.left, x2: width - MARGIN.right, y1: y(v), y2: y(v) }));
      chart.append(svg("text", { class: "tick", x: MARGIN.left - 6, y: y(v) + 4, "text-anchor": "end" }, v === 0 ? "0" : v > 0 ? "+1" : "−1"));
    }
    const step = [5, 10, 15, 30, 60].find((s) => (x1 - x0) / s <= 10) || 60;
    for (let t = Math.ceil(x0 / step) * step; t <= x1; t += step) {
      chart.append(svg("text", { class: "tick", x: x(t), y: HEIGHT - 4, "text-anchor": "middle" }, seconds(t)));
    }
    // utterance spans, and the open speech segment
    for (const u of points) {
      if (u.t1 < x0) continue;
      chart.append(
        svg(
          "rect",
          { class: "utt", x: x(Math.max(u.t0, x0)), y: MARGIN.top, width: Math.max(2, x(u.t1) - x(Math.max(u.t0, x0))), height: plotH, dataset: { utterance: u.id } },
          svg("title", {}, `${seconds(u.t0)} – ${seconds(u.t1)}  ${u.text ?? ""}`),
        ),
      );
    }
    if (speech && speech.t1 === null) {
      chart.append(svg("rect", { class: "utt live", x: x(Math.max(speech.t0, x0)), y: MARGIN.top, width: Math.max(3, x(x1) - x(Math.max(speech.t0, x0)) - 2), height: plotH }));
    }
    // valence and arousal, one point per utterance at its middle; hollow until the refined emotion arrives
    const scored = points.filter((u) => u.emotion && u.t1 >= x0);
    for (const [name, shape] of [
      ["valence", "circle"],
      ["arousal", "rect"],
    ]) {
      if (scored.length > 1) {
        const path = scored.map((u) => `${x((u.t0 + u.t1) / 2).toFixed(1)},${y(u.emotion[name]).toFixed(1)}`).join(" ");
        chart.append(svg("polyline", { class: `series ${name}`, points: path }));
      }
      for (const u of scored) {
        const cx = x((u.t0 + u.t1) / 2);
        const cy = y(u.emotion[name]);
        const attrs = { class: `pt ${name}${u.emotion.final ? " final" : ""}`, dataset: { utterance: u.id } };
        const top = [...(u.emotion.labels || [])].sort((a, b) => b.score - a.score)[0];
        const label = svg("title", {}, `${name} ${signed(u.emotion[name])}${top ? ` · ${top.label}` : ""} · ${u.emotion.model}`);
        chart.append(
          shape === "circle"
            ? svg("circle", { ...attrs, cx, cy, r: 4.5 }, label)
            : svg("rect", { ...attrs, x: cx - 4, y: cy - 4, width: 8, height: 8, transform: `rotate(45 ${cx} ${cy})` }, label),
        );
      }
    }
    // face episodes: onset..offset as a line, a triangle at the apex sized by intensity
    for (const m of episodes) {
      if (m.offset < x0) continue;
      const kind = m.kind === "macro" ? "macro" : "micro";
      const size = 4 + Math.min(1, m.intensity ?? 0) * 3;
      const ax = x(m.apex);
      chart.append(
        svg(
          "g",
          { class: `episode ${kind}`, dataset: { utterance: m.utterance, region: m.region, kind } },
          svg("line", { x1: x(Math.max(m.onset, x0)), x2: x(m.offset), y1: stripY, y2: stripY }),
          svg("path", { d: `M${ax},${stripY - size - 2} l${size},${size * 1.6} l${-2 * size},0 z` }),
          svg("title", {}, `${kind} ${m.region}: onset ${seconds(m.onset)}, apex ${seconds(m.apex)}, offset ${seconds(m.offset)}, intensity ${(m.intensity ?? 0).toFixed(2)}`),
        ),
      );
    }
    // listeners' reactions: one dot per listener (their colour) along the top of the utterance they reacted to
    const reactions = points.flatMap((u) => [...(person.reactions?.get(u.id)?.values() || [])].map((r, i) => ({ r, u, i })));
    for (const { r, u, i } of reactions) {
      if (u.t1 < x0) continue;
      const top = [...(r.labels || [])].sort((a, b) => b.score - a.score)[0];
      const moves = [...new Set((r.micro || []).map((m) => m.region))].join(", ") || "no movement";
      const how = `${r.participant} reacted: ${moves}${r.valence === null ? "" : ` · valence ${signed(r.valence)}`}${top ? ` · ${top.label}` : ""}`;
      chart.append(
        svg(
          "g",
          { class: "reaction", dataset: { utterance: u.id, listener: r.participant, label: top?.label ?? "" } },
          svg("circle", { cx: x(Math.max(u.t0, x0)) + 6 + 9 * i, cy: MARGIN.top + 6, r: 4, fill: r.colour }),
          svg("title", {}, how),
        ),
      );
    }
    const finals = scored.filter((u) => u.emotion.final).length;
    node.replaceChildren(
      el(
        "div",
        { class: "lane-head" },
        el("span", { class: "who", style: `color: ${person.colour}` }, person.id),
        el("small", {}, `${points.length} utterances · ${scored.length} scored (${finals} final) · ${episodes.length} face episodes · ${reactions.length} reactions`),
      ),
      chart,
    );
  }
}
