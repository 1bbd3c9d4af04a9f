// The search page: send the chosen or dropped photo to /api/search, show each gallery's neighbours.
// Plain JS, no framework, nothing downloaded: the page works offline.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;        // /api/info
let last = null;        // the last /api/search answer
let previewUrl = null;

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "className") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function loadInfo() {
  try {
    const response = await fetch("/api/info");
    info = await response.json();
  } catch (err) {
    showError(`cannot reach the server: ${err}`);
    return;
  }
  $("galleries").textContent = info.galleries
    .map((g) => `${g.name}: ${g.backbone} at ${g.image_size} px, ${g.images} images`)
    .join("  ·  ");
  $("k").value = info.k;
  $("k").max = info.max_k;
  $("drop-limit").textContent = `JPEG, PNG, WebP or BMP, up to ${info.max_upload}`;
  for (const c of info.classes) $("truth").append(el("option", { value: c.class }, [c.label]));
}

async function search(file) {
  if (!file) return;
  showError("");
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  $("query-preview").src = previewUrl;
  $("query-preview").hidden = false;
  $("query-info").textContent = file.name;
  $("busy").hidden = false;
  $("results").replaceChildren();
  last = null;
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("k", $("k").value);
  try {
    const response = await fetch("/api/search", { method: "POST", body: form });
    const body = await response.json().catch(() => ({ error: `the server answered ${response.status} ${response.statusText}` }));
    if (!response.ok) {
      $("query-preview").hidden = true;
      showError(body.error || `the server answered ${response.status}`);
      return;
    }
    last = body;
    render();
  } catch (err) {
    showError(`the search failed: ${err}`);
  } finally {
    $("busy").hidden = true;
  }
}

function referenceClass() {
  return $("truth").value || (last && last.query.guessed_class) || "";
}

function render() {
  if (!last) return;
  const ref = referenceClass();
  const q = last.query;
  const guessed = !$("truth").value && q.guessed_class;
  const label = ref ? (info.classes.find((c) => c.class === ref) || { label: ref }).label : "";
  $("query-info").textContent = `${q.file} · ${q.width}×${q.height}` +
    (ref ? ` · ${guessed ? "class from the file name" : "class"}: ${label}` : " · class unknown: pick it to mark right and wrong");
  const sides = last.results;
  const pathsOf = sides.map((s) => new Set(s.hits.map((h) => h.path)));
  $("results").replaceChildren(...sides.map((side, n) => renderSide(side, n, ref, label, sides, pathsOf)));
}

function renderSide(side, n, ref, label, sides, pathsOf) {
  const other = sides.length > 1 ? 1 - n : -1;
  const summary = el("p", { className: "summary" });
  if (ref) {
    const good = side.hits.filter((h) => h.class === ref).length;
    const top = side.hits[0] && side.hits[0].class === ref;
    summary.append(el("b", { className: top ? "right" : "wrong" }, [top ? "top-1 right" : "top-1 wrong"]),
      ` · ${good} of ${side.hits.length} are ${label}`);
  } else {
    summary.append(`${side.hits.length} nearest of ${side.images}`);
  }
  if (other >= 0) {
    const shared = side.hits.filter((h) => pathsOf[other].has(h.path)).length;
    summary.append(` · ${shared} of ${side.hits.length} also found by ${sides[other].name}`);
  }
  summary.append(` · ${side.ms} ms`);
  const hits = side.hits.map((h) => {
    const state = ref ? (h.class === ref ? "right" : "wrong") : "unknown";
    const figure = el("li", {
      className: `hit ${state}`, title: h.path,
      dataset: { rank: h.rank, id: h.id, path: h.path, cls: h.class, score: h.score },
    }, [
      el("img", { src: h.thumb, alt: `${h.label} (${h.file})` }),
      el("span", { className: "rank" }, [`#${h.rank}`]),
      el("div", { className: "label" }, [h.label]),
      el("div", { className: "dist" }, [`d ${h.distance.toFixed(3)} · cos ${h.score.toFixed(3)}`]),
    ]);
    if (other >= 0 && pathsOf[other].has(h.path)) figure.append(el("span", { className: "badge both" }, ["in both"]));
    return figure;
  });
  return el("article", { className: "side", dataset: { side: n, name: side.name } }, [
    el("h2", {}, [side.name, el("small", {}, [`${side.backbone}, ${side.image_size} px, ${side.format}`])]),
    summary,
    el("ol", { className: "hits" }, hits),
  ]);
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => search(e.target.files[0]));
  $("truth").addEventListener("change", render);
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => search(e.dataTransfer.files[0]));
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
  loadInfo();
}

setUp();
