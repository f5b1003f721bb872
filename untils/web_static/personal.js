// Personalized cropping in the page: the user's name, rating the offered crops (buttons or keys 1-5),
// the counts, the Personalize button with its job's progress, and the user's ranking beside the generic.
// app.js calls personalField(), renderPersonal(card) and setUpPersonal(health); this file calls
// app.js's recropAll() once the user or their model changes.
"use strict";

const USER_NAME = /^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$/;
const personal = { available: false, minPhotos: 0, minCrops: 1, job: null };

const $p = (selector, root = document) => root.querySelector(selector);

function currentUser() {
  const name = $p("#user").value.trim();
  return personal.available && USER_NAME.test(name) ? name.toLowerCase() : null;
}

function personalField(form) {
  const user = currentUser();
  if (user) {
    form.append("user", user);
  }
}

function setPersonalStatus(text, isError = false) {
  const status = $p("#personal-status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

async function askJson(url, options = {}) {
  const response = await fetch(url, options);
  const answer = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
  if (!response.ok) {
    throw new Error(answer.error || `the server answered ${response.status}`);
  }
  return answer;
}

function showCounts(summary) {
  const needed = Math.max(0, personal.minPhotos - summary.photos_ready);
  const more = needed ? ` Rate ${personal.minCrops}+ crops of ${needed} more photos to personalize.` : "";
  $p("#rated-count").textContent = `${summary.user}: ${summary.crops} crops of ${summary.photos} photos rated ` +
    `(${summary.photos_ready} with ${personal.minCrops}+ crops).${more}` +
    (summary.has_model ? " Personal model in use." : "");
  $p("#personalize").disabled = needed > 0 || personal.job !== null;
}

async function refreshCounts() {
  const user = currentUser();
  $p("#personalize").disabled = true;
  if (!user) {
    $p("#rated-count").textContent = $p("#user").value.trim()
      ? "A user name is 1 to 32 letters, digits, - or _." : "Type a name to rate crops and personalize.";
    return;
  }
  try {
    showCounts(await askJson(`/api/users/${encodeURIComponent(user)}/ratings`));
  } catch (error) {
    setPersonalStatus(`Could not read the ratings: ${error.message}`, true);
  }
}

// ---------------------------------------------------------------------------------------------
// One photo's personal column
// ---------------------------------------------------------------------------------------------

function cropThumb(card, box) {
  // the crop shown from the preview (no request): the preview scaled so the box fills the thumbnail
  const { width, height, preview } = card.answer;
  const side = 120;
  const scale = side / Math.max(box[2] - box[0], box[3] - box[1]);
  const thumb = document.createElement("div");
  thumb.className = "crop-thumb";
  thumb.style.width = `${(box[2] - box[0]) * scale}px`;
  thumb.style.height = `${(box[3] - box[1]) * scale}px`;
  thumb.style.backgroundImage = `url("${preview}")`;
  thumb.style.backgroundSize = `${width * scale}px ${height * scale}px`;
  thumb.style.backgroundPosition = `${-box[0] * scale}px ${-box[1] * scale}px`;
  return thumb;
}

function showRating(crop, item) {
  for (const button of item.querySelectorAll(".stars button")) {
    button.setAttribute("aria-pressed", String(Boolean(crop.rating) && Number(button.dataset.score) <= crop.rating));
  }
  item.classList.toggle("rated", Boolean(crop.rating));
}

// score 1-5 rates the crop; null removes its rating
async function rate(card, crop, score, item) {
  const user = currentUser();
  const photo = card.answer.photo_id;
  try {
    if (score === null) {
      const box = encodeURIComponent(crop.box.join(","));
      showCounts(await askJson(`/api/users/${user}/ratings/${photo}?box=${box}`, { method: "DELETE" }));
      crop.rating = null;
    } else {
      const answer = await askJson("/api/ratings", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ user, photo_id: photo, box: crop.box, score }),
      });
      crop.rating = answer.rating.score;
      showCounts(answer);
    }
    showRating(crop, item);
    setPersonalStatus("");
  } catch (error) {
    setPersonalStatus(`Could not save the rating: ${error.message}`, true);
  }
}

function ratableItem(card, crop) {
  const item = document.createElement("li");
  item.dataset.box = crop.box.join(",");
  item.tabIndex = 0;
  item.className = crop.rating ? "rated" : "";
  item.setAttribute("aria-label", `crop ${crop.rank}, score ${crop.score.toFixed(3)}: press 1 to 5 to rate it, 0 to clear`);
  const stars = document.createElement("div");
  stars.className = "stars";
  stars.setAttribute("role", "group");
  stars.setAttribute("aria-label", "your rating");
  for (let score = 1; score <= 5; score += 1) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.score = score;
    button.textContent = "★";
    button.title = `rate ${score} of 5`;
    button.setAttribute("aria-label", `rate ${score} of 5`);
    button.setAttribute("aria-pressed", String(Boolean(crop.rating) && score <= crop.rating));
    button.addEventListener("click", () => rate(card, crop, score, item));
    stars.append(button);
  }
  item.addEventListener("keydown", (event) => {
    if (/^[1-5]$/.test(event.key)) {
      event.preventDefault();
      rate(card, crop, Number(event.key), item);
    } else if ((event.key === "0" || event.key === "Delete") && crop.rating) {
      event.preventDefault();
      rate(card, crop, null, item);
    } else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      const next = event.key === "ArrowDown" ? item.nextElementSibling : item.previousElementSibling;
      if (next) {
        next.focus();
      }
    }
  });
  const caption = document.createElement("div");
  caption.textContent = `#${crop.rank} · ${crop.score.toFixed(3)}`;
  item.append(cropThumb(card, crop.box), caption, stars);
  return item;
}

function plainItem(card, crop) {
  const item = document.createElement("li");
  item.dataset.box = crop.box.join(",");
  const caption = document.createElement("div");
  caption.textContent = `#${crop.rank} · ${crop.score.toFixed(3)}`;
  item.append(cropThumb(card, crop.box), caption);
  return item;
}

function renderPersonal(card) {
  const column = $p(".personal-column", card.element);
  const entry = card.answer.personal;
  column.hidden = !entry;
  if (!entry) {
    return;
  }
  card.element.dataset.width = card.answer.width;
  const mine = entry.kind === "personal";
  $p(".personal-title", column).textContent = mine
    ? `${entry.user}'s ranking (personal model)`
    : `Rate these crops, ${entry.user} (the ${entry.ranked.length} candidates your model will score)`;
  const shown = Math.max(entry.crops.length, card.ratingsShown || 0);
  $p(".personal-crops", column).replaceChildren(...entry.ranked.slice(0, shown).map((crop) => ratableItem(card, crop)));
  const more = $p(".more-crops", column);
  more.hidden = shown >= entry.ranked.length;
  more.onclick = () => {
    card.ratingsShown = shown + personal.minCrops;
    renderPersonal(card);
  };
  const generic = $p(".generic-column", column);
  generic.hidden = !mine;
  $p(".generic-crops", column).replaceChildren(...(mine ? entry.generic.map((crop) => plainItem(card, crop)) : []));
}

// ---------------------------------------------------------------------------------------------
// Personalizing
// ---------------------------------------------------------------------------------------------

function showJob(job) {
  const bar = $p("#job-progress");
  bar.hidden = false;
  bar.value = job.progress;
  setPersonalStatus(`${job.state}: ${job.message}`, job.state === "failed");
}

async function personalize() {
  const user = currentUser();
  $p("#personalize").disabled = true;
  try {
    const { job } = await askJson("/api/personalize", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user }),
    });
    personal.job = job;
    showJob({ state: "queued", progress: 0, message: "waiting to start" });
    for (;;) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      const state = await askJson(`/api/jobs/${job}`);
      showJob(state);
      if (state.state === "done" || state.state === "failed") {
        break;
      }
    }
  } catch (error) {
    setPersonalStatus(`Could not personalize: ${error.message}`, true);
  } finally {
    personal.job = null;
    await refreshCounts();
    recropAll();
  }
}

function setUpPersonal(health) {
  const section = $p("#personal");
  personal.available = Boolean(health.personalization && health.personalization.available);
  section.hidden = !personal.available;
  if (!personal.available) {
    return;
  }
  personal.minPhotos = health.personalization.min_rated_photos;
  personal.minCrops = health.personalization.min_rated_crops;
  $p("#personalize").addEventListener("click", personalize);
  let timer = null;
  $p("#user").addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      refreshCounts();
      recropAll();
    }, 400);
  });
  refreshCounts();
}
