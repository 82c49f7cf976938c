// The call's event websocket (GET /events?call=...): reconnects with exponential back-off, pings, spots seq gaps.

const BACKOFF_S = { first: 0.5, max: 15 };
const PING_EVERY_MS = 15_000;

export class EventStream {
  /**
   * @param {{call: string, token?: string, onEvent: (evt) => void, onState: (state) => void, onGap: (missed) => void}} options
   * onState receives {state: "connecting"|"open"|"reconnecting"|"closed", attempt, retryInS, code, reason}.
   */
  constructor({ call, token, onEvent, onState, onGap }) {
    Object.assign(this, { call, token, onEvent, onState, onGap });
    this.attempt = 0;
    this.ws = null;
    this.stopped = false;
    this.lastSeq = null;
    this.retryTimer = null;
    this.pingTimer = null;
    this.refused = null; // {code, message} when the server turned the upgrade down (bad token, bad call)
    this.opened = new Promise((resolve) => (this.resolveOpened = resolve));
    this.connect();
  }

  get url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const query = new URLSearchParams({ call: this.call });
    if (this.token) query.set("token", this.token);
    return `${scheme}//${location.host}/events?${query}`;
  }

  connect() {
    this.onState({ state: "connecting", attempt: this.attempt });
    const ws = new WebSocket(this.url);
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.attempt = 0;
      this.refused = null;
      this.resolveOpened();
      this.onState({ state: "open" });
      this.pingTimer = setInterval(() => ws.readyState === WebSocket.OPEN && ws.send('{"type":"ping"}'), PING_EVERY_MS);
    };
    ws.onmessage = (message) => {
      let evt;
      try {
        evt = JSON.parse(message.data);
      } catch (err) {
        console.warn("event is not JSON", message.data, err);
        return;
      }
      // seq is per call and has no gaps: a jump after a reconnect counts what we missed while away
      // (the server does not replay); a smaller seq means the server restarted.
      if (typeof evt.seq === "number") {
        if (this.lastSeq !== null && evt.seq > this.lastSeq + 1) this.onGap(evt.seq - this.lastSeq - 1);
        this.lastSeq = evt.seq;
      }
      this.onEvent(evt);
    };
    ws.onclose = (close) => {
      clearInterval(this.pingTimer);
      if (this.stopped || ws !== this.ws) return;
      const retryInS = Math.min(BACKOFF_S.max, BACKOFF_S.first * 2 ** this.attempt) * (0.8 + 0.4 * Math.random());
      this.attempt += 1;
      const report = () => !this.stopped && this.onState({ state: "reconnecting", attempt: this.attempt, retryInS, code: close.code, reason: close.reason, refused: this.refused });
      report();
      if (!opened) this.probe().then(report);
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        this.connect();
      }, retryInS * 1000);
    };
  }

  /** A browser never sees why an upgrade failed; a plain GET of the same URL answers with the JSON error. */
  async probe() {
    const headers = this.token ? { Authorization: `Bearer ${this.token}` } : {};
    try {
      const response = await fetch(this.url.replace(/^ws/, "http").replace(/[?&]token=[^&]*/, ""), { headers });
      const body = await response.json().catch(() => ({}));
      const refused = response.status !== 400 || body.error?.code !== "websocket_required";
      this.refused = refused && body.error ? { code: body.error.code, message: body.error.message } : null;
    } catch {
      this.refused = null; // the server is unreachable; /healthz says so
    }
  }

  /** Reconnect now instead of waiting out the back-off (e.g. when /healthz answers again). */
  hurry() {
    if (this.stopped || !this.retryTimer) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.connect();
  }

  close() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.pingTimer);
    this.ws?.close(1000, "client closed");
    this.onState({ state: "closed" });
  }
}
