// The cropping page: sends each photo to POST /api/crop with the chosen options and shows the answer.
"use strict";

const RANK_COLOURS = ["#ffd400", "#00e5ff", "#ff4fd8", "#7cfc00", "#ff8c00", "#b388ff"];
const SVG = "http://www.w3.org/2000/svg";
const cards = [];
let hasDetector = true;

const $ = (selector, root = document) => root.querySelector(selector);

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

function options() {
  const ratios = [...document.querySelectorAll('input[name="ratio"]:checked')].map((input) => input.value);
  return {
    ratios,
    topK: $("#top-k").value,
    person: $('input[name="person"]:checked').value,
    keepPerson: $("#keep-person").checked,
  };
}

async function describeServer() {
  try {
    const health = await (await fetch("/api/health")).json();
    const model = health.model;
    const text = `${model.model_type} model (${model.backbone}) from ${model.checkpoint || "random weights"}; ` +
      `person detector: ${health.detector || "none"}.`;
    $("#model").textContent = model.warning ? `${text} ${model.warning}` : text;
    $("#model").classList.toggle("warning", Boolean(model.warning));
    hasDetector = Boolean(health.detector);
    setUpPersonal(health);
    if (!hasDetector) {
      const detected = $('input[name="person"][value="detected"]');
      detected.disabled = true;
      $('input[name="person"][value="none"]').checked = true;
    }
  } catch (error) {
    $("#model").textContent = `The server does not answer (${error.message}).`;
  }
}

function parseBox(text) {
  const values = text.split(",").map((part) => Number(part.trim()));
  if (values.length !== 4 || values.some((value) => !Number.isFinite(value))) {
    return null;
  }
  return values;
}

// ---------------------------------------------------------------------------------------------
// One photo's card
// ---------------------------------------------------------------------------------------------

function addPhoto(file) {
  const element = $("#card-template").content.firstElementChild.cloneNode(true);
  const card = { file, element, answer: null, shown: null, humanBox: null, request: 0, dragStart: null };
  $(".name", element).textContent = file.name;
  $(".show-crops", element).addEventListener("change", () => drawOverlay(card));
  $(".show-person", element).addEventListener("change", () => drawOverlay(card));
  $(".show-heat", element).addEventListener("change", () => {
    $(".heat", element).hidden = !$(".show-heat", element).checked || !card.answer || !card.answer.heat_map;
  });
  $(".box-form", element).addEventListener("submit", (event) => {
    event.preventDefault();
    const box = parseBox($(".box-input", element).value);
    if (box === null) {
      setStatus(card, "The person box must be four numbers x1,y1,x2,y2 in the photo's pixels.", true);
      return;
    }
    card.humanBox = box;
    cropPhoto(card);
  });
  listenForDrawing(card);
  $("#photos").prepend(element);
  cards.push(card);
  updateDrawingMode();
  cropPhoto(card);
}

function setStatus(card, text, isError = false) {
  const status = $(".status", card.element);
  status.textContent = text;
  status.classList.toggle("error", isError);
  status.setAttribute("role", isError ? "alert" : "status");
}

async function cropPhoto(card) {
  const chosen = options();
  if (chosen.ratios.length === 0) {
    setStatus(card, "Choose at least one ratio.", true);
    return;
  }
  const form = new FormData();
  form.append("aspect_ratio", chosen.ratios.join(","));
  form.append("top_k", chosen.topK);
  if (chosen.person === "detected" && hasDetector) {
    form.append("detect_human", "true");
  } else if (chosen.person === "draw" && card.humanBox) {
    form.append("human_box", card.humanBox.map((value) => Math.round(value)).join(","));
  }
  if (chosen.keepPerson) {
    form.append("keep_person", "true");
  }
  personalField(form);
  const request = ++card.request;
  setStatus(card, "Ranking the crops…");
  card.element.setAttribute("aria-busy", "true");
  let answer;
  try {
    answer = await postCrop(card, form);
  } catch (error) {
    if (request === card.request) {
      card.element.removeAttribute("aria-busy");
      setStatus(card, `Could not crop ${card.file.name}: ${error.message}`, true);
    }
    return;
  }
  if (request !== card.request) {
    return;  // a newer request for this photo is on its way
  }
  card.answer = answer;
  card.element.removeAttribute("aria-busy");
  render(card);
}

// A photo already on the server is ranked again by its id; uploaded again only once the server removed it.
async function postCrop(card, form) {
  let response = null;
  if (card.answer) {
    const byId = new FormData();
    form.forEach((value, key) => byId.append(key, value));
    byId.append("photo_id", card.answer.photo_id);
    response = await fetch("/api/crop", { method: "POST", body: byId });
  }
  if (response === null || response.status === 404) {
    form.append("photo", card.file, card.file.name);
    response = await fetch("/api/crop", { method: "POST", body: form });
  }
  const answer = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
  if (!response.ok) {
    throw new Error(answer.error || `the server answered ${response.status}`);
  }
  return answer;
}

function recropAll() {
  cards.forEach(cropPhoto);
}

function render(card) {
  const { answer, element } = card;
  const ratios = answer.results.map((entry) => entry.aspect_ratio);
  if (!ratios.includes(card.shown)) {
    card.shown = ratios[0];
  }
  const person = answer.person.box
    ? `person ${answer.person.source}${answer.person.detector ? ` (${answer.person.detector})` : ""}`
    : "no person";
  setStatus(card, `${answer.width}×${answer.height} px, ${person}.`);
  $(".preview", element).src = answer.preview;
  $(".preview", element).alt = `${card.file.name}, ${answer.width}×${answer.height}`;
  const heat = $(".heat", element);
  heat.hidden = !answer.heat_map || !$(".show-heat", element).checked;
  $(".show-heat", element).disabled = !answer.heat_map;
  if (answer.heat_map) {
    heat.src = answer.heat_map;
  }
  $(".overlay", element).setAttribute("viewBox", `0 0 ${answer.width} ${answer.height}`);
  const tabs = $(".ratio-tabs", element);
  tabs.replaceChildren(...ratios.map((ratio) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = ratio;
    button.setAttribute("aria-pressed", String(ratio === card.shown));
    button.addEventListener("click", () => {
      card.shown = ratio;
      render(card);
    });
    return button;
  }));
  const stem = card.file.name.replace(/\.[^.]*$/, "") || "photo";
  const json = new Blob([JSON.stringify(answer, null, 1)], { type: "application/json" });
  const downloads = $(".downloads", element);
  const previous = downloads.dataset.jsonUrl;
  if (previous) {
    URL.revokeObjectURL(previous);
  }
  downloads.dataset.jsonUrl = URL.createObjectURL(json);
  downloads.replaceChildren(
    link(`/api/photos/${answer.photo_id}/crops.zip`, "All crops (zip)", `${stem}_crops.zip`),
    link(downloads.dataset.jsonUrl, "JSON", `${stem}.json`));
  renderRatio(card);
  renderPersonal(card);
}

function link(href, text, download) {
  const anchor = document.createElement("a");
  anchor.href = href;
  anchor.textContent = text;
  anchor.download = download;
  return anchor;
}

function shownEntry(card) {
  return card.answer.results.find((entry) => entry.aspect_ratio === card.shown);
}

function renderRatio(card) {
  const entry = shownEntry(card);
  const { element } = card;
  const person = card.answer.person;
  const why = [`Ratio ${entry.aspect_ratio}: ${entry.ranked.length} candidates (${entry.candidates}) scored by the model.`,
    person.box ? `Scored with the person box (${person.source}).` : (person.note || "No person.")];
  if (entry.note) {
    why.push(`Note: ${entry.note}.`);
  }
  if (card.answer.heat_map) {
    why.push("The heat map shows the content the model wants kept (blue little, red most).");
  }
  $(".why", element).textContent = why.join(" ");
  const stem = card.file.name.replace(/\.[^.]*$/, "") || "photo";
  $(".thumbs", element).replaceChildren(...entry.crops.map((crop) => {
    const item = document.createElement("li");
    item.style.borderColor = RANK_COLOURS[(crop.rank - 1) % RANK_COLOURS.length];
    const image = document.createElement("img");
    image.src = crop.url;
    image.alt = `crop ${crop.rank} at ${entry.aspect_ratio}, score ${crop.score.toFixed(4)}`;
    const caption = document.createElement("div");
    caption.textContent = `#${crop.rank} · score ${crop.score.toFixed(4)} · ${crop.width}×${crop.height} `;
    const name = `${stem}_${entry.aspect_ratio.replace(":", "x")}_crop${crop.rank}`;
    caption.append(link(crop.url, "Download", name));
    item.append(image, caption);
    return item;
  }));
  drawOverlay(card);
}

function rect(box, className, colour) {
  const shape = document.createElementNS(SVG, "rect");
  shape.setAttribute("x", box[0]);
  shape.setAttribute("y", box[1]);
  shape.setAttribute("width", Math.max(0, box[2] - box[0]));
  shape.setAttribute("height", Math.max(0, box[3] - box[1]));
  shape.setAttribute("class", className);
  if (colour) {
    shape.setAttribute("stroke", colour);
  }
  return shape;
}

function drawOverlay(card, dragging = null) {
  const svg = $(".overlay", card.element);
  svg.replaceChildren();
  if (!card.answer) {
    return;
  }
  const scale = card.answer.width / Math.max(1, svg.getBoundingClientRect().width || card.answer.width);
  if ($(".show-crops", card.element).checked) {
    const crops = [...shownEntry(card).crops].reverse();  // the best drawn last, on top
    for (const crop of crops) {
      const colour = RANK_COLOURS[(crop.rank - 1) % RANK_COLOURS.length];
      svg.append(rect(crop.box, crop.rank === 1 ? "crop best" : "crop", colour));
      const label = document.createElementNS(SVG, "text");
      label.setAttribute("x", crop.box[0] + 6 * scale);
      label.setAttribute("y", crop.box[1] + (18 + 17 * (crop.rank - 1)) * scale);  // stacked: boxes often share a corner
      label.setAttribute("class", "label");
      label.setAttribute("style", `font-size:${13 * scale}px;stroke-width:${3 * scale}px`);
      label.textContent = `#${crop.rank} ${crop.score.toFixed(3)}`;
      svg.append(label);
    }
  }
  const personBox = dragging || card.answer.person.box;
  if (personBox && ($(".show-person", card.element).checked || dragging)) {
    svg.append(rect(personBox, "person-shadow"), rect(personBox, "person"));
  }
}

function photoPoint(card, event) {
  const svg = $(".overlay", card.element);
  const bounds = svg.getBoundingClientRect();
  const x = ((event.clientX - bounds.left) / bounds.width) * card.answer.width;
  const y = ((event.clientY - bounds.top) / bounds.height) * card.answer.height;
  return [Math.min(Math.max(x, 0), card.answer.width), Math.min(Math.max(y, 0), card.answer.height)];
}

function dragBox(start, end) {
  return [Math.min(start[0], end[0]), Math.min(start[1], end[1]), Math.max(start[0], end[0]),
    Math.max(start[1], end[1])];
}

function listenForDrawing(card) {
  const svg = $(".overlay", card.element);
  svg.addEventListener("pointerdown", (event) => {
    if (options().person !== "draw" || !card.answer) {
      return;
    }
    event.preventDefault();
    svg.setPointerCapture(event.pointerId);
    card.dragStart = photoPoint(card, event);
  });
  svg.addEventListener("pointermove", (event) => {
    if (card.dragStart) {
      drawOverlay(card, dragBox(card.dragStart, photoPoint(card, event)));
    }
  });
  svg.addEventListener("pointerup", (event) => {
    if (!card.dragStart) {
      return;
    }
    const box = dragBox(card.dragStart, photoPoint(card, event));
    card.dragStart = null;
    if (box[2] - box[0] < 4 || box[3] - box[1] < 4) {
      drawOverlay(card);
      return;
    }
    card.humanBox = box;
    $(".box-input", card.element).value = box.map((value) => Math.round(value)).join(",");
    cropPhoto(card);
  });
}

function updateDrawingMode() {
  const drawing = options().person === "draw";
  for (const card of cards) {
    $(".box-form", card.element).hidden = !drawing;
    $(".stage", card.element).classList.toggle("drawing", drawing);
  }
}

// ---------------------------------------------------------------------------------------------
// The page
// ---------------------------------------------------------------------------------------------

function addFiles(files) {
  const list = [...files];
  if (list.length === 0) {
    return;
  }
  showError("");
  list.forEach(addPhoto);
}

let optionsTimer = null;
function optionsChanged() {
  updateDrawingMode();
  const topK = Number($("#top-k").value);
  if (!Number.isInteger(topK) || topK < 1 || topK > 20) {
    showError("Top must be a whole number from 1 to 20.");
    return;
  }
  showError(options().ratios.length ? "" : "Choose at least one ratio.");
  clearTimeout(optionsTimer);
  optionsTimer = setTimeout(recropAll, 250);
}

function setUp() {
  describeServer();
  $("#options").addEventListener("change", optionsChanged);
  $("#options").addEventListener("submit", (event) => event.preventDefault());
  $("#file-input").addEventListener("change", (event) => {
    addFiles(event.target.files);
    event.target.value = "";
  });
  const drop = $("#drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    addFiles(event.dataTransfer.files);
  });
  window.addEventListener("resize", () => cards.forEach((card) => drawOverlay(card)));
}

setUp();
