// leanserve status page: reads the gateway's JSON APIs every few seconds and draws them.
// Every text from the gateway goes into the DOM as a text node or an attribute value (never
// as markup): variant and experiment names are user input.
"use strict";

(() => {
  const KEY = "leanserve.apiKey"; // sessionStorage only: gone with the tab, never in a URL
  const REFRESH_MS = 5000;
  const MAX_EXPERIMENTS = 20;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"];
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let generation = 0; // only the latest refresh renders and schedules the next one

  class Unauthorized extends Error {}

  // -- DOM helpers ------------------------------------------------------------------------------
  function append(node, children) {
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    return append(node, children);
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    return append(node, children);
  }

  function badge(text, kind) {
    return el("span", { class: `badge ${kind || stateKind(text)}` }, text);
  }

  function stateKind(state) {
    const s = String(state || "").toLowerCase();
    if (["ready", "running", "closed", "ok", "passed", "better"].includes(s)) return "ok";
    if (/fail|error|open|breach|worse|mismatch|dead/.test(s)) return "bad";
    return "busy";
  }

  // -- formatting -------------------------------------------------------------------------------
  const isNum = (x) => typeof x === "number" && Number.isFinite(x);
  const fmt = (x, digits = 3) => (isNum(x) ? x.toFixed(digits) : "–");
  const pct = (x) => (isNum(x) ? `${(x * 100).toFixed(0)} %` : "–");

  function sig(x) {
    if (!isNum(x)) return x === null || x === undefined ? "–" : String(x);
    if (x === 0 || Number.isInteger(x)) return String(x);
    return Math.abs(x) >= 0.001 ? String(Number(x.toPrecision(3))) : x.toExponential(1);
  }

  function duration(s) {
    if (!isNum(s)) return "–";
    if (s < 60) return `${Math.round(s)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  }

  // An interval as [low, high] from the shapes the reports use; "" when it has no bounds yet.
  function interval(x) {
    let bounds = null;
    if (Array.isArray(x) && x.length === 2) bounds = x;
    else if (x && typeof x === "object" && ("low" in x || "lower" in x)) {
      bounds = [x.low ?? x.lower, x.high ?? x.upper];
    }
    if (bounds) return bounds.every((b) => b === null || b === undefined) ? "" : `[${sig(bounds[0])}, ${sig(bounds[1])}]`;
    return x === null || x === undefined ? "" : loose(x);
  }

  // Any JSON value as short text: for fields whose shape may still change.
  function loose(x, depth = 0) {
    if (x === null || x === undefined) return "–";
    if (typeof x !== "object") return sig(x);
    if (depth > 1) return "…";
    if (Array.isArray(x)) return `[${x.map((v) => loose(v, depth + 1)).join(", ")}]`;
    return Object.entries(x)
      .map(([k, v]) => `${k}: ${loose(v, depth + 1)}`)
      .join(", ");
  }

  // A decision or a guardrail: a word (as a badge) and the rest as text.
  function verdict(x) {
    if (x === null || x === undefined) return "–";
    if (typeof x !== "object") return badge(String(x));
    const word = x.decision ?? x.state ?? x.status ?? x.action;
    const rest = Object.fromEntries(
      Object.entries(x).filter(([k]) => !["decision", "state", "status", "action"].includes(k)),
    );
    const span = el("span", {});
    if (word !== undefined) append(span, [badge(String(word)), " "]);
    if (Object.keys(rest).length) append(span, [el("span", { class: "muted" }, loose(rest))]);
    return span;
  }

  // -- fetching ---------------------------------------------------------------------------------
  async function getJSON(path, acceptStatus = []) {
    const headers = { Accept: "application/json" };
    const key = sessionStorage.getItem(KEY);
    if (key) headers.Authorization = `Bearer ${key}`;
    const response = await fetch(path, { headers, cache: "no-store", credentials: "omit" });
    if (response.status === 401) throw new Unauthorized(path);
    const body = await response.json().catch(() => null);
    if (!response.ok && !acceptStatus.includes(response.status)) {
      const message = body && body.error ? body.error.message : response.statusText;
      throw new Error(`${path}: ${response.status} ${message}`);
    }
    return body;
  }

  async function report(name) {
    try {
      return await getJSON(`/v1/experiments/${encodeURIComponent(name)}/report`);
    } catch (err) {
      if (err instanceof Unauthorized) throw err;
      return { error: err.message };
    }
  }

  async function refresh() {
    clearTimeout(timer);
    const mine = ++generation;
    try {
      const [variants, summary, ready, experiments] = await Promise.all([
        getJSON("/v1/variants"),
        getJSON("/v1/ui/summary"),
        getJSON("/ready", [503]), // 503 while an engine starts: still a full answer
        getJSON("/v1/experiments"),
      ]);
      const listed = experiments.data.slice(0, MAX_EXPERIMENTS);
      const reports = await Promise.all(listed.map((e) => report(e.name)));
      if (mine !== generation) return;
      showKeyPrompt(false);
      showError(null);
      render(variants.data, summary, ready, listed, reports);
    } catch (err) {
      if (mine !== generation) return;
      if (err instanceof Unauthorized) {
        showKeyPrompt(true);
        return; // nothing to refresh until a key is given
      }
      showError(`Could not load the gateway's data: ${err.message}`);
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }

  // -- the key ----------------------------------------------------------------------------------
  function showKeyPrompt(show) {
    const form = $("key-form");
    if (show) {
      const refused = sessionStorage.getItem(KEY) !== null;
      sessionStorage.removeItem(KEY);
      $("key-error").textContent = refused ? "The gateway refused that key." : "";
      $("content").hidden = true;
      form.hidden = false;
      $("key-input").focus();
    } else {
      form.hidden = true;
      $("content").hidden = false;
    }
    $("forget-key").hidden = sessionStorage.getItem(KEY) === null;
  }

  function onKeySubmit(event) {
    event.preventDefault();
    const input = $("key-input");
    const key = input.value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY, key);
    input.value = "";
    $("key-form").hidden = true;
    refresh();
  }

  function showError(message) {
    const box = $("error");
    box.hidden = !message;
    box.textContent = message || "";
  }

  // -- rendering --------------------------------------------------------------------------------
  function render(variants, summary, ready, experiments, reports) {
    const colors = new Map(variants.map((v, i) => [v.model, COLORS[i % COLORS.length]]));
    $("base").textContent = summary.base || "";
    const readiness = $("readiness");
    readiness.textContent = ready.ready ? "ready" : "starting";
    readiness.className = `badge ${ready.ready ? "ok" : "busy"}`;
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    renderVariants(variants, summary);
    renderFrontier(variants, summary.quality_floor);
    renderTraffic(variants, summary, colors);
    renderExperiments(experiments, reports);
    renderEngines(ready.engines || {});
  }

  function renderVariants(variants, summary) {
    const rates = summary.variants || {};
    const rows = variants.map((v) => {
      const card = v.card || {};
      const quality = card.quality || {};
      const size = card.size || {};
      const speedup = (card.speed || {}).speedup_32;
      const building = v.state === "building" || v.state === "queued";
      const progress = el("progress", { max: "100", value: String(v.percent ?? 0) });
      const rate = (rates[v.model] || {}).rate_per_s;
      return el(
        "tr",
        { "data-variant": v.id },
        el("td", {}, el("strong", {}, v.model), v.recipe ? el("div", { class: "muted" }, v.recipe) : null),
        el("td", {}, badge(v.state), v.error ? el("div", { class: "error" }, v.error) : null),
        el("td", { class: "build" }, progress, ` ${fmt(v.percent, 1)} %`,
          building && v.stage ? el("div", { class: "muted" }, v.stage) : null),
        el("td", {}, building ? duration(v.eta_s) : "–"),
        el("td", { title: `KL to base ${sig(quality.kl_to_base)}` },
          v.id === "base" ? "1 (reference)" : fmt(quality.top1_agreement)),
        el("td", { class: "live-quality" }, v.live_quality === undefined ? "–" : loose(v.live_quality)),
        el("td", {}, isNum(size.bytes) ? `${(size.bytes / 1e6).toFixed(0)} MB (${pct(size.size_ratio)})` : "–"),
        el("td", {}, isNum(speedup) ? `${speedup.toFixed(2)}×` : card.quality ? "not measured" : "–"),
        el("td", {}, isNum(rate) ? rate.toFixed(2) : "–"),
      );
    });
    $("variants").tBodies[0].replaceChildren(...rows);
  }

  // Cost relative to the base as the router prices it: 1 / measured speed-up, else size ratio.
  function relativeCost(card) {
    const speedup = (card.speed || {}).speedup_32;
    if (isNum(speedup) && speedup > 0) return 1 / speedup;
    const ratio = (card.size || {}).size_ratio;
    return isNum(ratio) ? ratio : null;
  }

  // Points that no other point beats: at most the cost and at least the quality, one strictly.
  function frontier(points) {
    const beats = (a, b) => a.x <= b.x && a.y >= b.y && (a.x < b.x || a.y > b.y);
    return points.filter((p) => !points.some((q) => beats(q, p))).sort((a, b) => a.x - b.x);
  }

  function renderFrontier(variants, floor) {
    const points = [];
    for (const v of variants) {
      if (v.id === "base") points.push({ x: 1, y: 1, label: "base", title: v.model });
      const card = v.card;
      if (!card || !card.quality) continue;
      const x = relativeCost(card);
      const y = card.quality.top1_agreement;
      if (isNum(x) && isNum(y)) points.push({ x, y, label: v.id, title: v.model });
    }
    const W = 460, H = 300, L = 52, R = 16, T = 14, B = 42;
    const xs = points.map((p) => p.x).concat([1]);
    const ys = points.map((p) => p.y).concat(isNum(floor) ? [floor, 1] : [1]);
    const pad = (lo, hi) => { const d = (hi - lo) * 0.12 || 0.05; return [lo - d, hi + d]; };
    const [x0, x1] = pad(Math.min(...xs), Math.max(...xs));
    const [y0, y1] = pad(Math.min(...ys), Math.max(...ys));
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
    const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "frontier", role: "img",
      "aria-label": "quality versus cost of each variant" });
    for (const t of ticks(x0, x1)) {
      plot.append(svg("line", { x1: sx(t), x2: sx(t), y1: T, y2: H - B, class: "grid" }));
      plot.append(svg("text", { x: sx(t), y: H - B + 14, class: "tick", "text-anchor": "middle" }, sig(t)));
    }
    for (const t of ticks(y0, y1)) {
      plot.append(svg("line", { x1: L, x2: W - R, y1: sy(t), y2: sy(t), class: "grid" }));
      plot.append(svg("text", { x: L - 4, y: sy(t) + 3, class: "tick", "text-anchor": "end" }, sig(t)));
    }
    plot.append(svg("text", { x: (L + W - R) / 2, y: H - 6, class: "axis", "text-anchor": "middle" },
      "cost relative to the base (lower is cheaper)"));
    plot.append(svg("text", { x: 12, y: (T + H - B) / 2, class: "axis", "text-anchor": "middle",
      transform: `rotate(-90 12 ${(T + H - B) / 2})` }, "quality: top-1 agreement"));
    if (isNum(floor)) {
      plot.append(svg("line", { x1: L, x2: W - R, y1: sy(floor), y2: sy(floor), class: "floor" }));
      plot.append(svg("text", { x: W - R - 2, y: sy(floor) - 4, class: "tick", "text-anchor": "end" },
        `quality floor ${floor}`));
    }
    const front = frontier(points);
    if (front.length > 1) {
      const path = front.map((p) => `${sx(p.x)},${sy(p.y)}`).join(" ");
      plot.append(svg("polyline", { points: path, class: "frontier-line" }));
    }
    for (const p of points) {
      const on = front.includes(p);
      plot.append(svg("circle", { cx: sx(p.x), cy: sy(p.y), r: 5, class: on ? "on-frontier" : "point",
        "data-label": p.label }, svg("title", {}, `${p.title}: cost ${sig(p.x)}, quality ${sig(p.y)}`)));
      plot.append(svg("text", { x: sx(p.x) + 7, y: sy(p.y) - 7, class: "label" }, p.label));
    }
    $("frontier").replaceChildren(plot);
  }

  function ticks(lo, hi, count = 5) {
    const raw = (hi - lo) / count;
    const step = [1, 2, 2.5, 5, 10].map((m) => m * 10 ** Math.floor(Math.log10(raw))).find((s) => s >= raw);
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-9; t += step) out.push(Number(t.toFixed(6)));
    return out;
  }

  function sparkline(series, color) {
    const W = 140, H = 26;
    const line = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "spark" });
    if (series.length < 2) return line;
    const max = Math.max(...series, 1e-9);
    const points = series.map((v, i) => `${(i / (series.length - 1)) * W},${H - 2 - (v / max) * (H - 4)}`);
    line.append(svg("polyline", { points: points.join(" "), stroke: color, class: "spark-line" }));
    return line;
  }

  function renderTraffic(variants, summary, colors) {
    const note = $("traffic-note");
    if (!summary.available) {
      note.textContent = `No request rates: ${summary.reason}.`;
      $("traffic").tBodies[0].replaceChildren();
      $("routing").replaceChildren();
      return;
    }
    note.textContent = `Requests answered per second over the last ${duration(summary.rate_window_s)}, `
      + `sampled every ${summary.interval_s} s; routing over the last ${duration(summary.window_s)}.`;
    const rates = summary.variants || {};
    const routedBy = {};
    for (const byVariant of Object.values(summary.routing || {})) {
      for (const [name, n] of Object.entries(byVariant)) routedBy[name] = (routedBy[name] || 0) + n;
    }
    const totalRouted = Object.values(routedBy).reduce((a, b) => a + b, 0);
    const names = [...new Set([...variants.map((v) => v.model), ...Object.keys(rates)])];
    $("traffic").tBodies[0].replaceChildren(...names.map((name) => {
      const r = rates[name] || {};
      const routed = routedBy[name] || 0;
      return el("tr", { "data-variant": name },
        el("td", {}, el("span", { class: "swatch", "data-color": colors.get(name) || "#777" }), name),
        el("td", {}, isNum(r.rate_per_s) ? r.rate_per_s.toFixed(2) : "–"),
        el("td", {}, sparkline(r.series || [], colors.get(name) || "#777")),
        el("td", {}, totalRouted ? `${routed} (${pct(routed / totalRouted)})` : "–"));
    }));
    for (const swatch of document.querySelectorAll(".swatch")) {
      swatch.style.background = swatch.dataset.color; // CSSOM: allowed where inline styles are not
    }
    const bars = Object.entries(summary.routing || {}).map(([policy, byVariant]) => {
      const total = Object.values(byVariant).reduce((a, b) => a + b, 0);
      const bar = svg("svg", { viewBox: "0 0 300 14", class: "split", preserveAspectRatio: "none" });
      let x = 0;
      const legend = [];
      for (const [name, n] of Object.entries(byVariant)) {
        const w = (300 * n) / total;
        bar.append(svg("rect", { x, y: 0, width: w, height: 14, fill: colors.get(name) || "#777" },
          svg("title", {}, `${name}: ${n}`)));
        x += w;
        legend.push(`${name} ${pct(n / total)}`);
      }
      return el("div", { class: "policy" }, el("strong", {}, `${policy} `),
        el("span", { class: "muted" }, `${total} routed: ${legend.join(", ")}`), bar);
    });
    $("routing").replaceChildren(
      ...(bars.length ? bars : [el("p", { class: "muted" }, "No routed requests in the window.")]));
  }

  function renderExperiments(experiments, reports) {
    if (!experiments.length) {
      $("experiments").replaceChildren(el("p", { class: "muted" }, "No experiments."));
      return;
    }
    $("experiments").replaceChildren(...experiments.map((e, i) => experimentCard(e, reports[i])));
  }

  // An arm's guardrail: {stopped: false} or {stopped: true, metric, reason, ...}; else as given.
  function guardrail(g, configured) {
    if (!g || typeof g !== "object" || typeof g.stopped !== "boolean") return verdict(g);
    if (!g.stopped) return configured ? badge("ok", "ok") : "–";
    const why = [g.metric, g.reason].filter(Boolean).join(": ");
    return el("span", {}, badge("stopped", "bad"), " ", el("span", { class: "muted" }, why));
  }

  function experimentCard(e, r) {
    const card = el("div", { class: "experiment", "data-experiment": e.name },
      el("h3", {}, e.name, " ", badge(r.state || e.state)),
      el("p", { class: "muted" }, `control: ${e.control}`, r.state_reason ? ` · ${r.state_reason}` : ""));
    if (r.error) return append(card, [el("p", { class: "error" }, r.error)]);
    if (r.decision !== undefined) append(card, [el("p", {}, "decision: ", verdict(r.decision))]);
    const guards = Array.isArray(r.guardrails) ? r.guardrails : [];
    if (guards.length) {
      const text = guards.map((g) => `${g.metric} (margin ${sig(g.margin)})`
        + (g.stopped_arms && g.stopped_arms.length ? `: stopped ${g.stopped_arms.join(", ")}` : ""));
      append(card, [el("p", { class: "guardrails" }, `guardrails: ${text.join("; ")}`)]);
    }
    if (r.ramp && isNum(r.ramp.share)) {
      append(card, [el("p", { class: "muted" }, `ramp: the other arms get ${pct(r.ramp.share)} of their traffic`)]);
    }
    const srm = r.sample_ratio_mismatch || {};
    if (srm.mismatch) append(card, [el("p", { class: "error" }, `sample ratio mismatch (p = ${sig(srm.p_value)})`)]);
    const variantOf = Object.fromEntries(e.arms.map((a) => [a.name, a]));
    const arms = r.arms || {};
    const armRows = Object.entries(arms).map(([name, a]) => {
      const lat = (a.latency_s || {}).mean || {};
      const fb = (a.feedback || {}).mean || {};
      const arm = variantOf[name] || {};
      return el("tr", { "data-arm": name },
        el("td", {}, name, name === r.control ? el("span", { class: "muted" }, " (control)") : null),
        el("td", {}, arm.variant || "–"), el("td", {}, sig(arm.weight)),
        el("td", { class: "n" }, sig(a.n)), el("td", {}, sig(a.errors)),
        el("td", {}, `${sig(lat.estimate)} ${interval(lat)}`),
        el("td", {}, (a.feedback || {}).n ? `${sig(fb.estimate)} ${interval(fb)} (n=${a.feedback.n})` : "–"),
        // Guardrails stop the other arms, never the control.
        el("td", { class: "guardrail" }, name === r.control ? "–" : guardrail(a.guardrail, guards.length > 0)));
    });
    append(card, [el("table", {}, el("thead", {}, el("tr", {}, ...["arm", "variant", "weight", "n", "errors",
      "latency mean (s) [95 %]", "feedback mean [95 %]", "guardrail"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...armRows))]);
    const effects = [];
    for (const [name, a] of Object.entries(arms)) {
      for (const [metric, t] of Object.entries(a.vs_control || {})) {
        if (!t || typeof t !== "object") continue;
        const rank = t.rank && isNum(t.rank.p_value) ? ` (rank ${sig(t.rank.p_value)})` : "";
        effects.push(el("tr", { "data-arm": name, "data-metric": metric },
          el("td", {}, `${name} − ${r.control}`), el("td", {}, metric),
          el("td", {}, sig(t.difference ?? t.effect)),
          el("td", {}, `${sig(t.p_value)}${rank}`),
          el("td", {}, t.always_valid_p === undefined ? "–" : sig(t.always_valid_p)),
          el("td", { class: "cs" }, interval(t.confidence_sequence) || "–"),
          el("td", {}, t.mde === undefined ? "–" : loose(t.mde)),
          el("td", { class: "decision" }, verdict(t.decision))));
      }
    }
    if (effects.length) {
      append(card, [el("table", { class: "effects" }, el("thead", {}, el("tr", {}, ...["comparison", "metric",
        "difference", "p (fixed horizon)", "always-valid p", "confidence sequence", "MDE", "decision"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...effects))]);
    }
    return card;
  }

  const ENGINE_KEYS = ["state", "url", "pid", "restarts", "breaker", "in_flight", "concurrency_limit", "error"];

  function renderEngines(engines) {
    $("engines").tBodies[0].replaceChildren(...Object.entries(engines).map(([name, e]) => {
      const extra = Object.fromEntries(Object.entries(e).filter(([k]) => !ENGINE_KEYS.includes(k)));
      return el("tr", { "data-engine": name },
        el("td", { title: e.url || "" }, name), el("td", {}, badge(e.state)),
        el("td", {}, sig(e.in_flight)), el("td", {}, sig(e.concurrency_limit)),
        el("td", {}, badge(e.breaker || "–", e.breaker === "open" ? "bad" : "ok")),
        el("td", {}, sig(e.restarts)), el("td", {}, sig(e.pid)),
        el("td", { class: "placement" }, Object.keys(extra).length ? loose(extra) : "–"),
        el("td", { class: "error" }, e.error || ""));
    }));
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("key-form").addEventListener("submit", onKeySubmit);
    $("forget-key").addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      refresh();
    });
    refresh();
  });
})();
