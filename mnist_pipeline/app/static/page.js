// The drawing page of `mnist-pipeline serve`: plain JavaScript, nothing loaded from elsewhere.
// Strokes are drawn white on black (as MNIST); while the user draws, the canvas is sent as a
// PNG to POST /predict at most every THROTTLE_MS, one request at a time, and the answer shown.
// When the server collects corrections (/health says `collect`), each answer is followed by
// "Wrong? It is a ...": a digit chosen sends the picture and its label to POST /corrections.
"use strict";

const THROTTLE_MS = 150;
const STROKE_WIDTH = 18; // canvas pixels of 280: about 2 px once the digit is 20 px tall

const pad = document.getElementById("pad");
const context = pad.getContext("2d");
const statusLine = document.getElementById("status");
const labelText = document.getElementById("label");
const confidenceText = document.getElementById("confidence");
const uncertainText = document.getElementById("uncertain"); // the answer's `uncertain` flag
const seen = document.getElementById("seen");
const fileInput = document.getElementById("file");

let drawing = false;
let inked = false; // anything drawn since the last Clear
let last = null; // last point of the stroke being drawn
let generation = 0; // bumped by Clear and by a picked file: older answers are dropped
let answers = 0; // answers shown, for tests and the curious
let pending = false; // the canvas changed since the last request
let inFlight = false;
let lastSent = -Infinity;
let timer = null;
let uploads = 0; // picked files being predicted
let collecting = false; // the server takes corrections (/health)
let checking = 1; // /health being asked
let shownSource = null; // what the answer shown is about: "pad", or the picked File
let correcting = 0; // corrections being sent
let corrections = 0; // corrections saved, for tests and the curious

// --- bars ---------------------------------------------------------------------------------

const bars = [];
for (let digit = 0; digit < 10; digit++) {
  const item = document.createElement("li");
  item.innerHTML = `<span class="digit">${digit}</span><span class="track">` +
    `<span class="fill"></span></span><span class="value"></span>`;
  document.getElementById("bars").appendChild(item);
  bars.push(item);
}

// --- drawing ------------------------------------------------------------------------------

function clearPad() {
  context.fillStyle = "#000";
  context.fillRect(0, 0, pad.width, pad.height);
  inked = false;
}

function pointOf(event) {
  const box = pad.getBoundingClientRect();
  return {
    x: (event.clientX - box.left) * pad.width / box.width,
    y: (event.clientY - box.top) * pad.height / box.height,
  };
}

function strokeTo(point) {
  context.strokeStyle = "#fff";
  context.lineWidth = STROKE_WIDTH;
  context.lineCap = "round";
  context.lineJoin = "round";
  context.beginPath();
  context.moveTo(last.x, last.y);
  context.lineTo(point.x, point.y);
  context.stroke();
  last = point;
  inked = true;
}

function dot(point) {
  context.fillStyle = "#fff";
  context.beginPath();
  context.arc(point.x, point.y, STROKE_WIDTH / 2, 0, 2 * Math.PI);
  context.fill();
  inked = true;
}

pad.addEventListener("pointerdown", (event) => {
  if (event.pointerType === "mouse" && event.button !== 0) return;
  event.preventDefault();
  try {
    pad.setPointerCapture(event.pointerId);
  } catch (error) {
    // a synthetic event has no active pointer to capture; drawing works all the same
  }
  drawing = true;
  last = pointOf(event);
  dot(last); // a zero-length line would draw nothing
  requestPrediction();
});

pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  event.preventDefault();
  const coalesced = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const each of coalesced.length ? coalesced : [event]) strokeTo(pointOf(each));
  requestPrediction();
});

function endStroke() {
  if (!drawing) return;
  drawing = false;
  requestPrediction();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);
pad.addEventListener("lostpointercapture", endStroke);

document.getElementById("clear").addEventListener("click", () => {
  generation++;
  pending = false;
  clearPad();
  fileInput.value = "";
  showNothing("Draw with the mouse, a finger or a pen.");
  settle();
});

// --- asking the server --------------------------------------------------------------------

function requestPrediction() {
  pending = true;
  pump();
}

// body[data-state] is "busy" while anything is still to be sent or answered (tests wait on it).
function settle() {
  const busy = pending || inFlight || uploads > 0 || timer !== null || checking > 0 ||
    correcting > 0;
  document.body.dataset.state = busy ? "busy" : "idle";
}

// At most one request in flight and one every THROTTLE_MS; the last drawing is always sent.
function pump() {
  if (pending && !inFlight && timer === null) {
    const wait = lastSent + THROTTLE_MS - performance.now();
    if (wait > 0) {
      timer = setTimeout(() => { timer = null; pump(); }, wait);
    } else {
      pending = false;
      if (inked) send();
    }
  }
  settle();
}

function send() {
  inFlight = true;
  lastSent = performance.now();
  const sent = generation;
  pad.toBlob((blob) => {
    predict(blob, "drawing.png", sent, "pad").finally(() => {
      inFlight = false;
      pump();
    });
  }, "image/png");
}

async function predict(blob, name, sent, source) {
  const form = new FormData();
  form.append("file", blob, name);
  let response;
  let body;
  try {
    response = await fetch("/predict", { method: "POST", body: form });
    body = await response.json();
  } catch (error) {
    if (sent === generation) showError(`the server did not answer (${error.message})`);
    return;
  }
  if (sent !== generation) return; // cleared, or another picture, meanwhile
  if (!response.ok) {
    showError(body.detail || `error ${response.status}`);
    return;
  }
  show(body);
  offerCorrection(source);
}

fileInput.addEventListener("change", () => {
  const file = fileInput.files[0];
  if (!file) return;
  generation++;
  pending = false;
  clearPad();
  hideCorrection(); // until the picture's own answer
  statusLine.textContent = `Picture: ${file.name}`;
  statusLine.className = "";
  uploads++;
  settle();
  predict(file, file.name, generation, file).finally(() => {
    uploads--;
    settle();
  });
});

// --- showing the answer -------------------------------------------------------------------

function show(result) {
  labelText.textContent = String(result.label);
  confidenceText.textContent = `${(100 * result.confidence).toFixed(1)}%`;
  uncertainText.hidden = !result.uncertain;
  result.probabilities.forEach((probability, digit) => {
    bars[digit].querySelector(".fill").style.width = `${(100 * probability).toFixed(1)}%`;
    bars[digit].querySelector(".value").textContent = probability.toFixed(3);
    bars[digit].classList.toggle("best", digit === result.label);
  });
  drawSeen(result.digit);
  if (statusLine.className === "error") {
    statusLine.textContent = "";
    statusLine.className = "";
  }
  answers++;
  document.body.dataset.answers = String(answers);
}

function drawSeen(digit) {
  const picture = seen.getContext("2d").createImageData(28, 28);
  for (let row = 0; row < 28; row++) {
    for (let column = 0; column < 28; column++) {
      const at = 4 * (28 * row + column);
      const value = digit ? digit[row][column] : 0;
      picture.data.set([value, value, value, 255], at);
    }
  }
  seen.getContext("2d").putImageData(picture, 0, 0);
}

function showNothing(message) {
  labelText.textContent = "–";
  confidenceText.textContent = "–";
  uncertainText.hidden = true;
  for (const item of bars) {
    item.querySelector(".fill").style.width = "0";
    item.querySelector(".value").textContent = "";
    item.classList.remove("best");
  }
  drawSeen(null);
  hideCorrection();
  statusLine.textContent = message;
  statusLine.className = "";
}

function showError(message) {
  statusLine.textContent = message;
  statusLine.className = "error";
  document.body.dataset.errors = String(Number(document.body.dataset.errors || 0) + 1);
}

// --- corrections (serve --collect) -----------------------------------------------------

const correction = document.getElementById("correction");
const correctionStatus = document.getElementById("correction-status");
const digitButtons = [];
for (let digit = 0; digit < 10; digit++) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = String(digit);
  button.setAttribute("aria-label", `It is a ${digit}`);
  button.addEventListener("click", () => correct(digit));
  document.getElementById("correction-digits").appendChild(button);
  digitButtons.push(button);
}

// A random id per browser, so that the pipeline can hold out whole writers for its test.
function writerId() {
  const plain = /^[A-Za-z0-9_-]{1,64}$/;
  let id = null;
  try {
    id = localStorage.getItem("mnist-writer");
  } catch (error) {
    // storage disabled: an id for this visit only
  }
  if (id && plain.test(id)) return id;
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  id = Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
  try {
    localStorage.setItem("mnist-writer", id);
  } catch (error) {
    // as above
  }
  return id;
}
const writer = writerId();

function enableDigits(enabled) {
  for (const button of digitButtons) button.disabled = !enabled;
}

function offerCorrection(source) {
  shownSource = source;
  correction.hidden = !collecting;
  correctionStatus.textContent = "";
  correctionStatus.className = "";
  enableDigits(true);
}

function hideCorrection() {
  shownSource = null;
  correction.hidden = true;
}

async function correct(digit) {
  const source = shownSource;
  if (!source || correcting > 0) return;
  correcting++;
  enableDigits(false);
  settle();
  let response;
  let body;
  try {
    const blob = source === "pad"
      ? await new Promise((resolve) => pad.toBlob(resolve, "image/png")) : source;
    const form = new FormData();
    form.append("file", blob, source === "pad" ? "drawing.png" : source.name);
    form.append("label", String(digit));
    form.append("writer", writer);
    response = await fetch("/corrections", { method: "POST", body: form });
    body = await response.json();
  } catch (error) {
    body = { detail: `the server did not answer (${error.message})` };
  } finally {
    correcting--;
    settle();
  }
  if (response && response.ok) {
    corrections++;
    document.body.dataset.corrections = String(corrections);
    correctionStatus.textContent = `Saved as a ${digit}. Thank you!`;
    correctionStatus.className = "";
    return; // the digits come back with the next answer
  }
  correctionStatus.textContent = `Not saved: ${body.detail || `error ${response.status}`}`;
  correctionStatus.className = "error";
  enableDigits(true);
}

fetch("/health")
  .then((response) => response.json())
  .then((health) => { collecting = health.collect === true; })
  .catch(() => { collecting = false; })
  .finally(() => {
    checking--;
    if (shownSource) correction.hidden = !collecting;
    settle();
  });

clearPad();
showNothing("Draw with the mouse, a finger or a pen.");
document.body.dataset.answers = "0";
document.body.dataset.corrections = "0";
settle();
