// Small shared helpers: element building, colours and time formats (no event data ever goes through innerHTML).

export const ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

/** el("li", {class: "x", dataset: {participant: "a"}}, "text", child) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  node.append(...children.filter((c) => c !== undefined && c !== null && c !== false));
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, String(value));
  }
  node.append(...children);
  return node;
}

// Distinct, readable on white; participants take them in the order the page first sees them.
const PALETTE = ["#c0392b", "#2563eb", "#059669", "#9333ea", "#d97706", "#0891b2", "#db2777", "#4d7c0f"];

export function colourOf(order) {
  return PALETTE[order % PALETTE.length];
}

/** Media seconds as "12.3 s" or "1:02.3". */
export function seconds(s) {
  if (typeof s !== "number" || !Number.isFinite(s)) return "–";
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return `${m}:${(s - m * 60).toFixed(1).padStart(4, "0")}`;
}

export function span(t0, t1) {
  if (typeof t0 !== "number") return "";
  return typeof t1 === "number" ? `${seconds(t0)} – ${seconds(t1)}` : seconds(t0);
}

export function signed(x) {
  return typeof x === "number" ? (x >= 0 ? "+" : "−") + Math.abs(x).toFixed(2) : "–";
}

export function clock(ts) {
  const d = typeof ts === "number" ? new Date(ts * 1000) : new Date();
  return d.toLocaleTimeString([], { hour12: false });
}
