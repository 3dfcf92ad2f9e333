// The page at /: pick an image and a transform, POST it, show before/after, offer a download.
// Work the service says is too slow for a request (413 too_slow) goes again as a job, with a
// progress bar; a painting can be learned as a new style (POST /v1/styles), followed the same
// way. Plain browser JavaScript, no build step and nothing from outside this service.
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("form"), file: $("file"), drop: $("drop"), fileInfo: $("file-info"),
  styles: $("styles"), factors: $("factors"),
  styleOptions: $("style-options"), superresOptions: $("superres-options"),
  strength: $("strength"), strengthValue: $("strength-value"), preserveColor: $("preserve-color"),
  apiKey: $("api-key"), submit: $("submit"), status: $("status"), error: $("error"),
  progress: $("progress"),
  resultBox: $("result-box"), compare: $("compare"), before: $("before"), result: $("result"),
  split: $("split"), download: $("download"), resultInfo: $("result-info"),
};
const learn = {
  form: $("learn-form"), painting: $("painting"), name: $("style-name"), button: $("learn"),
  progress: $("learn-progress"), status: $("learn-status"), error: $("learn-error"),
};
let image = null;                       // the chosen File
const urls = { before: null, result: null };

function headers() {
  const key = ui.apiKey.value.trim();
  return key ? { "X-API-Key": key } : {};
}

function showError(text) {
  ui.error.textContent = text;
  ui.error.hidden = !text;
}

// The service answers errors as {"error": {"code", "message"}}; anything else is shown as is.
async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) {
      return { code: body.error.code,
               text: `${body.error.message} (${response.status} ${body.error.code})` };
    }
  } catch (_) { /* not JSON */ }
  return { code: null, text: `the service answered ${response.status} ${response.statusText}` };
}

async function errorText(response) {
  return (await errorOf(response)).text;
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

// A job's status every `everyMs` until it ends, the bar and the status line following it
// (`describe` words the progress); the ended job.
async function followJob(job, bar, status, describe, everyMs = 500) {
  bar.hidden = false;
  bar.removeAttribute("value");                       // indeterminate while queued
  while (job.state === "queued" || job.state === "running") {
    if (job.progress.total) {
      bar.max = job.progress.total;
      bar.value = job.progress.done;
    }
    status.textContent = describe(job);
    await sleep(everyMs);
    const polled = await fetch(job.url, { headers: headers() });
    if (!polled.ok) throw new Error(await errorText(polled));
    job = await polled.json();
  }
  if (job.state !== "done") {
    throw new Error(job.error ? `${job.error.message} (${job.error.code})` : `it was ${job.state}`);
  }
  return job;
}

// POST /v1/jobs/..., followed until done (the bar shows the tiles); the result, or an Error.
async function runAsJob(url, body) {
  const submitted = await fetch(url.replace("/v1/", "/v1/jobs/"),
    { method: "POST", body, headers: headers() });
  if (!submitted.ok) throw new Error(await errorText(submitted));
  const job = await followJob(await submitted.json(), ui.progress, ui.status, (j) =>
    (j.progress.total ? `Working as a job: ${j.progress.done} of ${j.progress.total} tiles.`
      : "Queued as a job…"));
  const result = await fetch(job.result, { headers: headers() });
  if (!result.ok) throw new Error(await errorText(result));
  return result;
}

// A new style from a painting (POST /v1/styles), followed to the end; then it is in the list.
async function learnStyle(event) {
  event.preventDefault();
  learn.error.hidden = true;
  const painting = learn.painting.files[0];
  const name = learn.name.value.trim();
  if (!painting || !name) {
    learn.error.textContent = "Choose a painting and a name for its style.";
    learn.error.hidden = false;
    return;
  }
  const body = new FormData();
  body.append("image", painting, painting.name);
  learn.button.disabled = true;
  try {
    const submitted = await fetch(`/v1/styles?name=${encodeURIComponent(name)}`,
      { method: "POST", body, headers: headers() });
    if (!submitted.ok) throw new Error(await errorText(submitted));
    await followJob(await submitted.json(), learn.progress, learn.status, (j) => {
      if (!j.progress.total) return j.state === "queued" ? "Queued…" : "Starting…";
      const left = j.detail && j.detail.seconds_left;
      return `Learning: step ${j.progress.done} of ${j.progress.total}` +
        (left === undefined ? "." : `, about ${Math.ceil(left)} s left.`);
    }, 1000);
    learn.progress.hidden = true;
    await loadModels();
    const choice = ui.styles.querySelector(`input[value="${CSS.escape(name)}"]`);
    if (choice) choice.checked = true;
    learn.status.textContent = `Learned ${name}: pick it above.`;   // once it is in the list
  } catch (e) {
    learn.error.textContent = `The style could not be learned: ${e.message}`;
    learn.error.hidden = false;
    learn.status.textContent = "";
  } finally {
    learn.button.disabled = false;
    learn.progress.hidden = true;
  }
}

function setObjectUrl(which, blob) {
  if (urls[which]) URL.revokeObjectURL(urls[which]);
  urls[which] = URL.createObjectURL(blob);
  return urls[which];
}

function task() {
  return ui.form.elements.task.value;
}

function showTaskOptions() {
  const style = task() === "style";
  ui.styleOptions.hidden = !style;
  ui.superresOptions.hidden = style;
}

// One radio button per style (with the painting's thumbnail when the service has it) and one
// per super-resolution factor, from GET /v1/models.
async function loadModels() {
  let response;
  try {
    response = await fetch("/v1/models", { headers: headers() });
  } catch (e) {
    ui.styles.textContent = `Could not reach the service: ${e.message}`;
    return;
  }
  if (response.status === 503) {                      // still loading the models
    setTimeout(loadModels, 1000);
    return;
  }
  if (!response.ok) {
    ui.styles.textContent = `Could not list the models: ${await errorText(response)}`;
    return;
  }
  const { models } = await response.json();
  // A style is a single-style network's name or one a multi-style network holds (`styles`).
  const styles = [...new Set(models.filter((m) => m.task === "style")
    .flatMap((m) => (m.styles && m.styles.length ? m.styles : [m.name])))].sort();
  const factors = [...new Set(models.filter((m) => m.task === "superres").map((m) => m.factor))]
    .sort((a, b) => a - b);

  ui.styles.replaceChildren(...styles.map((name, i) => styleChoice(name, i === 0)));
  if (!styles.length) ui.styles.textContent = "No style models are loaded.";
  ui.factors.replaceChildren(...factors.map((factor, i) => {
    const label = document.createElement("label");
    const input = Object.assign(document.createElement("input"),
      { type: "radio", name: "factor", value: String(factor), checked: i === 0 });
    label.append(input, ` ×${factor}`);
    return label;
  }));
  if (!factors.length) ui.factors.textContent = "No super-resolution models are loaded.";
}

function styleChoice(name, checked) {
  const label = document.createElement("label");
  label.className = "style-choice";
  const input = Object.assign(document.createElement("input"),
    { type: "radio", name: "style", value: name, checked });
  const caption = document.createElement("span");
  caption.textContent = name.replaceAll("_", " ");
  label.append(input, caption);
  loadThumbnail(name, label, caption);
  return label;
}

// Fetched (not <img src>) so that an API key can go with it; without a painting the choice
// shows just the name.
async function loadThumbnail(name, label, caption) {
  try {
    const response = await fetch(`/v1/styles/${encodeURIComponent(name)}/thumbnail`,
      { headers: headers() });
    if (!response.ok) return;
    const img = Object.assign(document.createElement("img"),
      { alt: "", src: URL.createObjectURL(await response.blob()) });
    label.insertBefore(img, caption);
  } catch (_) { /* the name is enough */ }
}

function chooseFile(file) {
  image = file || null;
  showError("");
  ui.fileInfo.textContent = image
    ? `${image.name} (${Math.ceil(image.size / 1024)} KiB)` : "";
}

function requestUrl() {
  const params = new URLSearchParams({ format: "png" });
  if (task() === "style") {
    const style = ui.form.elements.style && ui.form.elements.style.value;
    if (!style) return null;
    params.set("style", style);
    params.set("strength", ui.strength.value);
    if (ui.preserveColor.checked) params.set("preserve_color", "true");
    return `/v1/stylize?${params}`;
  }
  const factor = ui.form.elements.factor && ui.form.elements.factor.value;
  if (!factor) return null;
  params.set("factor", factor);
  return `/v1/superres?${params}`;
}

async function transform(event) {
  event.preventDefault();
  showError("");
  if (!image) {
    showError("Choose an image first.");
    ui.file.focus();
    return;
  }
  const url = requestUrl();
  if (!url) {
    showError("No model is available for this transform.");
    return;
  }
  const body = new FormData();
  body.append("image", image, image.name);
  ui.submit.disabled = true;
  ui.status.textContent = "Working…";
  const started = performance.now();
  try {
    let response = await fetch(url, { method: "POST", body, headers: headers() });
    if (!response.ok) {
      const error = await errorOf(response);
      if (error.code !== "too_slow") {
        showError(`The image could not be transformed: ${error.text}`);
        ui.status.textContent = "";
        return;
      }
      response = await runAsJob(url, body);
    }
    const blob = await response.blob();
    await showResult(blob, response, (performance.now() - started) / 1000);
  } catch (e) {
    showError(`The request failed: ${e.message}`);
    ui.status.textContent = "";
  } finally {
    ui.submit.disabled = false;
    ui.progress.hidden = true;
  }
}

async function showResult(blob, response, seconds) {
  ui.before.src = setObjectUrl("before", image);
  ui.result.src = setObjectUrl("result", blob);
  // Browsers cannot show every input format (TIFF): the "before" is best effort.
  await Promise.all([ui.before.decode().catch(() => {}), ui.result.decode()]);
  ui.compare.style.maxWidth = `${ui.result.naturalWidth}px`;
  const suffix = task() === "style"
    ? ui.form.elements.style.value : `x${ui.form.elements.factor.value}`;
  ui.download.href = urls.result;
  ui.download.download = `${image.name.replace(/\.[^.]*$/, "")}-${suffix}.png`;
  ui.resultInfo.textContent = `${ui.result.naturalWidth}×${ui.result.naturalHeight} px, ` +
    `${seconds.toFixed(1)} s (cache ${response.headers.get("X-Cache") || "?"})`;
  ui.resultBox.hidden = false;
  ui.status.textContent = "Done.";
}

ui.file.addEventListener("change", () => chooseFile(ui.file.files[0]));
ui.drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  ui.drop.classList.add("dragging");
});
ui.drop.addEventListener("dragleave", () => ui.drop.classList.remove("dragging"));
ui.drop.addEventListener("drop", (e) => {
  e.preventDefault();
  ui.drop.classList.remove("dragging");
  if (e.dataTransfer.files.length) chooseFile(e.dataTransfer.files[0]);
});
ui.form.addEventListener("change", (e) => { if (e.target.name === "task") showTaskOptions(); });
ui.strength.addEventListener("input", () => {
  ui.strengthValue.textContent = Number(ui.strength.value).toFixed(2);
});
ui.split.addEventListener("input", () => {
  ui.compare.style.setProperty("--split", `${ui.split.value}%`);
});
ui.apiKey.addEventListener("change", loadModels);
ui.form.addEventListener("submit", transform);
learn.form.addEventListener("submit", learnStyle);
showTaskOptions();
loadModels();
