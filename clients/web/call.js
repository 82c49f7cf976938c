// Publishing our camera and microphone to the server: getUserMedia → RTCPeerConnection → POST /offer.

const ICE_GATHERING_TIMEOUT_MS = 5000;

// The server analyses the voice itself: echo cancellation, noise suppression and auto gain alter speech.
const AUDIO = { echoCancellation: false, noiseSuppression: false, autoGainControl: false };
const VIDEO = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } };

export class JoinError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/** Camera and microphone; falls back to the microphone alone when there is no camera. */
export async function openMedia() {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new JoinError("insecure_context", "camera and microphone need https or localhost");
  }
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: AUDIO, video: VIDEO });
  } catch (err) {
    if (err.name !== "NotFoundError" && err.name !== "OverconstrainedError" && err.name !== "NotReadableError") {
      throw new JoinError("media_denied", `camera/microphone: ${err.name}: ${err.message}`);
    }
    console.warn("no usable camera, joining with the microphone only", err);
    return navigator.mediaDevices.getUserMedia({ audio: AUDIO });
  }
}

/**
 * Offer `stream` to the server as participant `participant` of `call`.
 * Returns {pc, session}. `onState(connectionState)` follows the peer connection.
 */
export async function publish(stream, { call, participant, token, onState }) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  pc.onconnectionstatechange = () => onState(pc.connectionState);
  for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
  try {
    await pc.setLocalDescription(await pc.createOffer());
    // The server takes no trickled candidates: send the offer once every candidate is in it.
    await iceGatheringComplete(pc);
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    // ?call= lets a load balancer pin the call to one node (it cannot read the body): deploy/README.md
    const response = await fetch(`/offer?call=${encodeURIComponent(call)}`, {
      method: "POST",
      headers,
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", call, participant }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = body.error || {};
      throw new JoinError(error.code || `http_${response.status}`, error.message || response.statusText);
    }
    await pc.setRemoteDescription({ type: body.type, sdp: body.sdp });
    return { pc, session: body.session };
  } catch (err) {
    pc.close();
    throw err instanceof JoinError ? err : new JoinError("offer_failed", err.message || String(err));
  }
}

function iceGatheringComplete(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== "complete") return;
      pc.removeEventListener("icegatheringstatechange", done);
      clearTimeout(timer);
      resolve();
    };
    // With no ICE servers gathering takes milliseconds; never hang on a misbehaving network though.
    const timer = setTimeout(() => {
      pc.removeEventListener("icegatheringstatechange", done);
      resolve();
    }, ICE_GATHERING_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", done);
  });
}
