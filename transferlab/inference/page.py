"""The page ``serve`` shows at ``/``: drop images (or pick them, or take one with the webcam) and see the
top classes as bars, "unknown" when the image is unlike the training images, and where the model
looked (Grad-CAM). Plain HTML and JavaScript, nothing fetched from elsewhere."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>transferlab: try the model</title>
<style>
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 980px; padding: 1rem; color: #222; }
h1 { font-size: 1.3rem; margin: .2rem 0; } #about { color: #555; margin-bottom: 1rem; }
#drop { border: 2px dashed #8aa; border-radius: 10px; padding: 1.6rem; text-align: center; background: #f6fafa; }
#drop.over { background: #e3f2f2; border-color: #377; }
button, label.button { background: #2a6f6f; color: #fff; border: 0; border-radius: 6px; padding: .45rem .9rem;
  cursor: pointer; font: inherit; display: inline-block; margin: .3rem; }
#camera { display: none; margin-top: 1rem; text-align: center; } video { max-width: 100%; border-radius: 8px; }
.result { display: flex; gap: 1rem; border-bottom: 1px solid #ddd; padding: .8rem 0; align-items: flex-start; }
.result img { width: 160px; height: 160px; object-fit: cover; border-radius: 6px; }
.answer { flex: 1; } .label { font-size: 1.25rem; font-weight: 600; }
.unknown .label { color: #b45309; } .note { color: #666; font-size: .9rem; }
.bar { display: flex; align-items: center; gap: .5rem; margin: .15rem 0; }
.bar span.name { width: 9rem; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.bar .track { flex: 1; background: #eee; border-radius: 4px; height: 14px; }
.bar .fill { background: #2a6f6f; height: 14px; border-radius: 4px; } .bar .pct { width: 3.5rem; text-align: right; }
#error { color: #b91c1c; margin: .6rem 0; }
</style></head>
<body data-state="idle">
<h1>Try the model</h1>
<div id="about">Loading the model card ...</div>
<div id="drop">
  Drop images here, or
  <label class="button" for="file">choose files</label>
  <input id="file" type="file" accept="image/*" multiple hidden>
  <button id="start-camera" type="button">use the webcam</button>
</div>
<div id="camera"><video id="video" autoplay playsinline></video><br>
  <button id="snap" type="button">classify this frame</button> <button id="stop-camera" type="button">stop</button></div>
<div id="error" role="alert"></div>
<div id="results" aria-live="polite"></div>
<script>
const $ = (id) => document.getElementById(id);
const pct = (p) => (100 * p).toFixed(1) + "%";
let stream = null;

fetch("/model").then((r) => r.json()).then((card) => {
  const m = card.model || {}, s = card.scores || {}, serving = card.serving || {};
  const classes = serving.classes || (card.data || {}).classes || [];
  $("about").textContent = (m.strategy ? m.strategy + " on " + m.backbone + ", " : "") +
    classes.length + " classes (" + classes.join(", ") + ")" +
    (s.test_accuracy != null ? ", test accuracy " + pct(s.test_accuracy) : "") + ", served with " + serving.backend + ".";
}).catch(() => { $("about").textContent = ""; });

function row(file, answer) {
  const div = document.createElement("div");
  div.className = "result" + (answer.unknown ? " unknown" : "");
  const img = document.createElement("img");
  img.alt = file.name || "image";
  img.src = answer.gradcam || URL.createObjectURL(file);
  img.title = answer.gradcam ? "where the model looked (Grad-CAM)" : "";
  const box = document.createElement("div");
  box.className = "answer";
  const label = document.createElement("div");
  label.className = "label";
  label.textContent = answer.label;
  box.appendChild(label);
  const note = document.createElement("div");
  note.className = "note";
  note.textContent = (answer.unknown ? "unlike the training images (score " + answer.unknown_score.toFixed(2) +
    " > " + answer.threshold.toFixed(2) + "); nearest class " + answer.nearest + ". " : "") +
    (file.name || "") + (answer.gradcam ? " (overlay: where the model looked)" : "");
  box.appendChild(note);
  for (const t of answer.top) {
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.innerHTML = '<span class="name"></span><div class="track"><div class="fill"></div></div><span class="pct"></span>';
    bar.querySelector(".name").textContent = t.label;
    bar.querySelector(".fill").style.width = pct(t.prob);
    bar.querySelector(".pct").textContent = pct(t.prob);
    box.appendChild(bar);
  }
  div.appendChild(img);
  div.appendChild(box);
  return div;
}

async function classify(files) {
  files = Array.from(files).filter((f) => f.type.startsWith("image/") || !f.type);
  if (!files.length) return;
  document.body.dataset.state = "busy";
  $("error").textContent = "";
  const form = new FormData();
  files.forEach((f, k) => form.append("file", f, f.name || ("frame" + k + ".png")));
  try {
    const r = await fetch("/predict?top_k=5&explain=1", { method: "POST", body: form });
    const doc = await r.json();
    if (!r.ok) throw new Error(doc.error || r.statusText);
    const results = $("results");
    doc.predictions.forEach((a, k) => results.prepend(row(files[k], a)));
    document.body.dataset.state = "done";
  } catch (e) {
    $("error").textContent = "Could not classify: " + e.message;
    document.body.dataset.state = "error";
  }
}

$("file").addEventListener("change", (e) => classify(e.target.files));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); classify(e.dataTransfer.files); });

$("start-camera").addEventListener("click", async () => {
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: true });
    $("video").srcObject = stream;
    $("camera").style.display = "block";
  } catch (e) { $("error").textContent = "No webcam: " + e.message; }
});
$("stop-camera").addEventListener("click", () => {
  if (stream) stream.getTracks().forEach((t) => t.stop());
  $("camera").style.display = "none";
});
$("snap").addEventListener("click", () => {
  const v = $("video"), c = document.createElement("canvas");
  c.width = v.videoWidth; c.height = v.videoHeight;
  c.getContext("2d").drawImage(v, 0, 0);
  c.toBlob((blob) => classify([new File([blob], "webcam.png", { type: "image/png" })]), "image/png");
});
</script>
</body></html>
"""
