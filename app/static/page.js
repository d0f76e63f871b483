// graphserve's page: the public API only (GET /models, POST /image_classification, GET /stats).
// Every string from the server goes into the page through textContent, never as HTML.
"use strict";

(() => {
  const STATS_EVERY_MS = 3000;
  const HISTORY = 60; // chart points kept: 3 minutes at one refresh every 3 s
  const COLOURS = ["#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#dc2626"];
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);

  // el("li", {class: "x", text: "y", "data-a": "b"}, child, ...): attributes as attributes, text as text.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    return node;
  }

  const ms = (value) => (value === null || value === undefined ? "–" : `${Number(value).toFixed(value < 10 ? 2 : 1)}`);
  function bytes(value) {
    if (typeof value !== "number") return "–";
    const mib = value / (1024 * 1024);
    return mib >= 1024 ? `${(mib / 1024).toFixed(2)} GiB` : `${mib.toFixed(1)} MiB`;
  }
  function duration(seconds) {
    const s = Math.floor(seconds);
    if (s < 120) return `${s} s`;
    if (s < 7200) return `${Math.floor(s / 60)} min`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }

  // ---- errors: the server's own message, as the API sent it ------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, options) {
    let response;
    try {
      response = await fetch(path, { cache: "no-store", ...options });
    } catch (err) {
      throw new ApiError(0, "network", `could not reach the server (${err.message})`);
    }
    const text = await response.text();
    let body = null;
    try { body = JSON.parse(text); } catch (_) { /* not JSON: shown as text below */ }
    if (!response.ok) {
      const error = body && body.error;
      if (error && typeof error === "object") throw new ApiError(response.status, error.code, String(error.message));
      if (typeof error === "string") throw new ApiError(response.status, "", error); // v2 / TF Serving style
      throw new ApiError(response.status, "", `${response.status} ${response.statusText} ${text.slice(0, 200)}`.trim());
    }
    if (body === null) throw new ApiError(response.status, "", "the server's answer was not JSON");
    return body;
  }

  function showError(err, context) {
    const box = $("error");
    box.replaceChildren();
    if (!err) { box.hidden = true; return; }
    const head = [context, err.status ? `${err.status}` : "", err.code || ""].filter(Boolean).join(" · ");
    if (head) box.append(el("span", { class: "error-head", text: head }));
    box.append(el("span", { class: "error-message", text: err.message }));
    box.hidden = false;
  }

  // ---- models -----------------------------------------------------------------------------

  async function loadModels() {
    const status = $("models-status");
    let models;
    try {
      ({ models } = await api("/models"));
      models = models.filter((model) => model.kind !== "tensors"); // served by their tensors: no images
    } catch (err) {
      status.textContent = `Could not list the models: ${err.message}`;
      return;
    }
    const list = $("models");
    list.replaceChildren();
    if (!models.length) {
      status.textContent = "No model is served.";
      return;
    }
    status.textContent = "";
    status.hidden = true;
    models.forEach((model, i) => {
      outputs.set(model.name, model.output);
      const id = `model-${i}`;
      const answers = (v) => v.state === "available" || v.on_demand; // on_demand: the request loads it
      const usable = model.versions.some(answers);
      const box = el("input", { type: "checkbox", id, name: "model", value: model.name, checked: usable, disabled: !usable });
      const select = el("select", { id: `${id}-version`, class: "version", "data-model": model.name,
        "aria-label": `version of ${model.name}`, disabled: !usable });
      select.append(el("option", { value: "", text: model.version === null ? "default" : `default (v${model.version})` }));
      for (const v of model.versions) {
        select.append(el("option", { value: `version=${v.version}`, disabled: !answers(v),
          text: v.state === "available" ? `v${v.version}`
            : v.on_demand ? `v${v.version} (not in memory: loads on request)` : `v${v.version} (${v.state})` }));
      }
      for (const [label, version] of Object.entries(model.labels || {})) {
        select.append(el("option", { value: `version_label=${label}`, text: `${label} (v${version})` }));
      }
      const detail = model.input ? `${model.input.width}×${model.input.height}×${model.input.channels}, ${model.classes} classes` : "";
      list.append(el("li", { "data-model": model.name },
        box,
        el("label", { for: id }, el("span", { class: "model-name", text: model.name }),
          el("span", { class: "muted small", text: model.state === "available" ? detail
            : usable ? " not in memory: loads on request" : ` ${model.state}` })),
        select));
    });
  }

  // The API applies version / version_label to every model a request names, so models whose
  // chosen version differs go in separate requests, one per choice.
  function requestGroups() {
    const groups = new Map();
    for (const box of document.querySelectorAll("#models input[type=checkbox]:checked")) {
      const select = document.querySelector(`#models select[data-model="${CSS.escape(box.value)}"]`);
      const choice = select ? select.value : "";
      if (!groups.has(choice)) groups.set(choice, []);
      groups.get(choice).push(box.value);
    }
    return groups;
  }

  // ---- classify ---------------------------------------------------------------------------

  const outputs = new Map(); // model name -> output kind from /models: "scores" are not probabilities
  let thumbnails = [];
  let pasted = 0;

  async function classify(files) {
    files = files.filter((f) => f instanceof File);
    if (!files.length) return;
    const groups = requestGroups();
    if (!groups.size) {
      showError(new ApiError(0, "", "Pick at least one model."), "");
      return;
    }
    showError(null);
    const topK = $("top-k").value.trim();
    const models = [...groups.values()].flat();
    $("busy").textContent = `Classifying ${files.length} image${files.length > 1 ? "s" : ""} with ${models.join(", ")}…`;

    const answers = await Promise.all([...groups].map(async ([choice, names]) => {
      const params = new URLSearchParams({ model: names.join(",") });
      if (topK) params.set("top_k", topK);
      if (choice) {
        const [key, value] = choice.split("=");
        params.set(key, value);
      }
      const form = new FormData();
      for (const file of files) form.append("image", file, file.name);
      try {
        return { names, body: await api(`/image_classification?${params}`, { method: "POST", body: form }) };
      } catch (err) {
        return { names, error: err };
      }
    }));
    $("busy").textContent = "";
    const failed = answers.find((a) => a.error);
    if (failed) showError(failed.error, failed.names.join(", "));
    render(files, answers.filter((a) => a.body));
    refreshStats();
  }

  function render(files, answers) {
    for (const url of thumbnails) URL.revokeObjectURL(url);
    thumbnails = [];
    const results = $("results");
    results.replaceChildren();
    if (!answers.length) return;
    files.forEach((file, i) => {
      const url = URL.createObjectURL(file);
      thumbnails.push(url);
      const cards = el("div", { class: "cards" });
      for (const { body } of answers) {
        for (const [name, model] of Object.entries(body.models)) {
          cards.append(card(name, model, model.results[i], body.time_ms));
        }
      }
      results.append(el("article", { class: "result" },
        el("figure", { class: "thumb" },
          el("img", { src: url, alt: `uploaded image ${file.name}` }),
          el("figcaption", { class: "small", text: file.name })),
        cards));
    });
  }

  function card(name, model, result, request) {
    const list = el("ol", { class: "scores" });
    // probabilities (and logits, softmaxed by the service) are shares of 1; raw scores are
    // shown as numbers, their bars relative to the top one
    const raw = outputs.get(name) === "scores";
    const scale = raw ? Math.max(...result.top_k.map((e) => e.score), 0) || 1 : 1;
    for (const entry of result.top_k) {
      const fill = el("span", { class: "fill" });
      fill.style.width = `${Math.max(0, Math.min(1, entry.score / scale)) * 100}%`; // CSSOM: allowed by the CSP
      list.append(el("li", { "data-class-id": entry.class_id },
        el("span", { class: "label", text: entry.label }),
        el("span", { class: "pct", text: raw ? entry.score.toFixed(3) : `${(entry.score * 100).toFixed(1)}%` }),
        el("span", { class: "bar", "aria-hidden": "true" }, fill)));
    }
    return el("section", { class: "card", "data-model": name },
      el("h3", {}, el("span", { text: name }), el("span", { class: "muted small", text: ` v${model.version}` }),
        raw ? el("span", { class: "muted small", text: " · raw scores" }) : null),
      list,
      timings(model.time_ms, request));
  }

  // The stages of this request: checks (whole request), then this model's queue, run, post-processing.
  function timings(stages, request) {
    const parts = [["checks", request.checks], ["queue", stages.queue], ["run", stages.run], ["post", stages.postprocess]];
    const bar = el("span", { class: "stages", "aria-hidden": "true" });
    for (const [stage, value] of parts) {
      const seg = el("span", { class: `seg seg-${stage}` });
      seg.style.width = `${request.total > 0 ? (value / request.total) * 100 : 0}%`;
      bar.append(seg);
    }
    const text = parts.map(([stage, value]) => `${stage} ${ms(value)}`).join(" · ");
    return el("div", { class: "timing small" }, bar,
      el("span", { class: "timing-text", text: `${text} · total ${ms(request.total)} ms` }));
  }

  // ---- input: file chooser, drag and drop, paste ------------------------------------------

  function wireInputs() {
    const input = $("file");
    input.addEventListener("change", () => {
      const files = [...input.files];
      input.value = ""; // choosing the same file again fires change again
      classify(files);
    });
    const drop = $("drop");
    let depth = 0;
    document.addEventListener("dragenter", (e) => { e.preventDefault(); depth++; drop.classList.add("over"); });
    document.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; drop.classList.remove("over"); } });
    document.addEventListener("dragover", (e) => { e.preventDefault(); }); // a drop anywhere uploads
    document.addEventListener("drop", (e) => {
      e.preventDefault();
      depth = 0;
      drop.classList.remove("over");
      classify([...(e.dataTransfer ? e.dataTransfer.files : [])]);
    });
    document.addEventListener("paste", (e) => {
      const items = e.clipboardData ? [...e.clipboardData.items] : [];
      const files = items.filter((item) => item.kind === "file").map((item) => item.getAsFile()).filter(Boolean);
      if (!files.length) return; // text pasted into the top-k box stays text
      e.preventDefault();
      classify(files.map((file) => {
        const ext = (file.type.split("/")[1] || "png").replace(/[^a-z0-9]/gi, "");
        return new File([file], file.name && file.name !== "image.png" ? file.name : `pasted-${++pasted}.${ext}`, { type: file.type });
      }));
    });
    $("controls").addEventListener("submit", (e) => e.preventDefault());
  }

  // ---- live panel ---------------------------------------------------------------------------

  const history = []; // [{model: {p50, p99}}], oldest first
  const colours = new Map();
  let timer = null;

  function colour(name) {
    if (!colours.has(name)) colours.set(name, COLOURS[colours.size % COLOURS.length]);
    return colours.get(name);
  }

  async function refreshStats() {
    clearTimeout(timer);
    try {
      const stats = await api("/stats");
      showStats(stats);
      $("stats-error").hidden = true;
    } catch (err) {
      $("stats-error").textContent = `GET /stats: ${err.message}`;
      $("stats-error").hidden = false;
    }
    if (!document.hidden) timer = setTimeout(refreshStats, STATS_EVERY_MS);
  }

  function showStats(stats) {
    $("live-updated").textContent = `· ${new Date().toLocaleTimeString()}`;
    $("uptime").textContent = duration(stats.uptime_seconds);
    $("rss").textContent = bytes(stats.process.rss_bytes);
    $("peak-rss").textContent = bytes(stats.process.peak_rss_bytes);
    const gpu = stats.gpu || {};
    $("gpu").textContent = gpu.available
      ? gpu.devices.map((d) => `${d.device}: ${bytes(d.bytes_in_use)} (peak ${bytes(d.peak_bytes)})`).join("; ")
      : `none${gpu.reason ? ` (${gpu.reason})` : ""}`;

    const budget = stats.memory_budget;
    const inMemory = Object.keys(stats.models).join(", ") || "none";
    $("loaded").textContent = budget && budget.memory_budget_bytes
      ? `${inMemory} (${bytes(budget.reserved_bytes)} of a ${bytes(budget.memory_budget_bytes)} budget)`
      : inMemory;

    const body = $("stats-body");
    body.replaceChildren();
    const point = {};
    for (const [name, model] of Object.entries(stats.models)) {
      point[name] = { p50: model.latency_ms.p50, p99: model.latency_ms.p99 };
      for (const [version, v] of Object.entries(model.versions || { [model.version]: model })) {
        const counts = Object.entries(v.requests || {});
        const total = counts.reduce((sum, [, n]) => sum + n, 0);
        const failed = counts.filter(([status]) => !status.startsWith("2")).reduce((sum, [, n]) => sum + n, 0);
        const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
        swatch.style.background = colour(name);
        body.append(el("tr", { "data-model": name, "data-version": version },
          el("th", { scope: "row" }, swatch, el("span", { text: name })),
          el("td", { text: version }),
          el("td", { class: "requests", title: counts.map(([s, n]) => `${s}: ${n}`).join(", ") || "none yet",
            text: failed ? `${total} (${failed} err)` : String(total) }),
          el("td", { class: "p50", text: ms(v.latency_ms.p50) }),
          el("td", { class: "p99", text: ms(v.latency_ms.p99) }),
          el("td", { class: "queue", text: v.in_flight ? `${v.queue_depth} (+${v.in_flight})` : String(v.queue_depth) })));
      }
    }
    history.push(point);
    if (history.length > HISTORY) history.shift();
    drawChart(Object.keys(stats.models));
  }

  function drawChart(names) {
    const W = 320, H = 140, L = 34, R = 6, T = 8, B = 16;
    const values = history.flatMap((p) => names.flatMap((n) => (p[n] ? [p[n].p50, p[n].p99] : []))).filter((v) => typeof v === "number");
    const top = niceCeiling(Math.max(1, ...values));
    const span = Math.max(2, history.length) - 1; // the points so far fill the width; "now" is the right edge
    const x = (i) => L + (i + Math.max(2, history.length) - history.length) * (W - L - R) / span;
    const y = (v) => T + (H - T - B) * (1 - v / top);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", focusable: "false" });
    for (const tick of [0, top / 2, top]) {
      root.append(svg("line", { x1: L, x2: W - R, y1: y(tick), y2: y(tick), class: "grid" }));
      const label = svg("text", { x: L - 4, y: y(tick) + 3, class: "axis", "text-anchor": "end" });
      label.textContent = tick === 0 || tick >= 10 ? tick.toFixed(0) : tick.toFixed(1);
      root.append(label);
    }
    const now = svg("text", { x: W - R, y: H - 3, class: "axis", "text-anchor": "end" });
    now.textContent = "now";
    root.append(now);
    for (const name of names) {
      for (const [key, dash] of [["p99", "4 3"], ["p50", ""]]) {
        let d = "";
        let pen = "M";
        history.forEach((p, i) => {
          const v = p[name] ? p[name][key] : null;
          if (typeof v !== "number") { pen = "M"; return; }
          d += `${pen}${x(i).toFixed(1)},${y(v).toFixed(1)} `;
          pen = "L";
        });
        if (!d) continue;
        const path = svg("path", { d, fill: "none", stroke: colour(name), "stroke-width": key === "p50" ? 2 : 1.25 });
        if (dash) path.setAttribute("stroke-dasharray", dash);
        root.append(path);
      }
    }
    $("chart").replaceChildren(root);
    $("legend").replaceChildren(...names.map((name) => {
      const swatch = el("span", { class: "swatch", "aria-hidden": "true" });
      swatch.style.background = colour(name);
      return el("li", {}, swatch, el("span", { text: name }));
    }));
  }

  function niceCeiling(value) {
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
    return 10 * power;
  }

  document.addEventListener("visibilitychange", () => { if (!document.hidden) refreshStats(); });

  wireInputs();
  loadModels();
  refreshStats();
})();
