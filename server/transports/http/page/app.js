// The page at `/`: explain dropped images with a served model through the
// explain-by-upload endpoint (server/rest_explain.py) and draw the map over each
// image in the browser, so opacity changes need no new request. No framework,
// no build step, nothing fetched from elsewhere: it works offline.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], items: [], token: sessionStorage.getItem("camserve-token") || "" };

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers);
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (response.status === 401) {
    $("token-label").hidden = false;
    throw new Error("this server wants a bearer token: enter it above");
  }
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function option(select, value, text) {
  const element = document.createElement("option");
  element.value = value;
  element.textContent = text;
  select.appendChild(element);
}

function model() {
  return state.models[Number($("model").value)];
}

function fillModelChoices() {
  const m = model();
  for (const id of ["method", "class", "layer"]) $(id).replaceChildren();
  m.methods.forEach((name) => option($("method"), name, name));
  option($("class"), "", "top-1");
  m.classes.forEach((label, index) => option($("class"), String(index), `${index}: ${label}`));
  [...m.layers, ...m.fusions].forEach((name, index) => option($("layer"), index ? name : "", name));
}

async function loadModels() {
  try {
    const { models } = await api("/camserve/models");
    state.models = models.filter((m) => m.input_height > 0); // loading or refused versions carry no shape
    $("model").replaceChildren();
    state.models.forEach((m, index) => option($("model"), String(index), `${m.name} v${m.version}`));
    if (!state.models.length) return status("no model is served yet", true);
    fillModelChoices();
    status(`${state.models.length} model version(s) served`);
  } catch (error) {
    status(error.message, true);
  }
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the browser cannot show this image"));
    image.src = url;
  });
}

function draw(item) {
  const { answer, card } = item;
  if (!answer) return;
  const { width, height } = answer.image;
  for (const [selector, withMap] of [[".image", false], [".overlay", true]]) {
    const canvas = card.querySelector(selector);
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d");
    context.fillStyle = "#fff"; // the server composites transparency onto white too
    context.fillRect(0, 0, width, height);
    if (item.bitmap) context.drawImage(item.bitmap, 0, 0, width, height);
    if (!withMap || !item.heatmap) continue;
    const [x0, y0, x1, y1] = answer.heatmap.region;
    context.globalAlpha = Number($("opacity").value);
    context.drawImage(item.heatmap, x0, y0, x1 - x0, y1 - y0);
    context.globalAlpha = 1;
    if (answer.box && $("box").checked) {
      const b = answer.box;
      context.strokeStyle = "#fff";
      context.lineWidth = Math.max(1, Math.round(Math.max(width, height) / 200));
      context.strokeRect(b.x0 + 0.5, b.y0 + 0.5, b.x1 - b.x0 - 1, b.y1 - b.y0 - 1);
    }
  }
}

function showTopK(item) {
  const { answer, card } = item;
  const rows = answer.top_k.map((p, rank) => {
    const row = document.createElement("tr");
    row.dataset.index = p.index;
    row.dataset.probability = p.probability;
    row.title = "explain this class";
    if (p.index === answer.explained.index) row.className = "explained";
    for (const text of [rank + 1, p.label || p.index, (100 * p.probability).toFixed(2) + " %"]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    }
    row.onclick = () => explain(item, p.index);
    return row;
  });
  card.querySelector("tbody").replaceChildren(...rows);
  const label = answer.explained.label || answer.explained.index;
  card.querySelector(".caption").textContent = `${answer.method} for ${label} (${(100 * answer.explained.probability).toFixed(1)} %)`;
}

async function explain(item, classIndex) {
  const m = model();
  const { card } = item;
  // Answers may arrive out of order (a slow method, then a quick one): only the latest
  // request for this image may draw.
  const ticket = (item.latest = (item.latest || 0) + 1);
  card.dataset.state = "loading";
  const query = new URLSearchParams({ method: $("method").value, top_k: Math.min(5, m.num_classes), heatmap: "png" });
  if ($("layer").value) query.set("layer", $("layer").value);
  const chosen = classIndex ?? $("class").value;
  if (chosen !== "" && chosen !== undefined) query.set("class_index", chosen);
  const path = `/camserve/models/${encodeURIComponent(m.name)}/versions/${m.version}/explain?${query}`;
  try {
    const answer = await api(path, {
      method: "POST",
      body: item.file,
      headers: { "Content-Type": item.file.type || "application/octet-stream" },
    });
    const heatmap = answer.heatmap ? await loadImage("data:image/png;base64," + answer.heatmap.data) : null;
    if (ticket !== item.latest) return;
    item.heatmap = heatmap;
    item.answer = answer;
    card.querySelector(".error").hidden = true;
    showTopK(item);
    draw(item);
    card.dataset.state = "done";
  } catch (error) {
    if (ticket !== item.latest) return;
    card.querySelector(".error").textContent = error.message;
    card.querySelector(".error").hidden = false;
    card.dataset.state = "error";
  }
}

async function add(files) {
  if (!model()) return status("no model to explain with", true);
  const jobs = [];
  for (const file of files) {
    const card = $("card").content.firstElementChild.cloneNode(true);
    card.querySelector(".name").textContent = file.name;
    $("results").prepend(card);
    const item = { file, card, bitmap: null };
    state.items.push(item);
    // EXIF orientation applied, as the server applies it, so the map lines up.
    item.bitmap = await createImageBitmap(file, { imageOrientation: "from-image" }).catch(() => null);
    jobs.push(explain(item));
  }
  await Promise.all(jobs);
}

function explainAll() {
  state.items.forEach((item) => explain(item));
}

$("files").onchange = (event) => add(event.target.files);
$("model").onchange = () => {
  fillModelChoices();
  explainAll();
};
for (const id of ["method", "class", "layer"]) $(id).onchange = explainAll;
$("opacity").oninput = () => {
  $("opacity-value").textContent = Number($("opacity").value).toFixed(2);
  state.items.forEach(draw);
};
$("box").onchange = () => state.items.forEach(draw);
$("token").onchange = () => {
  state.token = $("token").value;
  sessionStorage.setItem("camserve-token", state.token);
  loadModels();
};
const drop = $("drop");
drop.ondragover = (event) => {
  event.preventDefault();
  drop.classList.add("over");
};
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  add(event.dataTransfer.files);
};
loadModels();
