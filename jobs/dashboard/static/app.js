// Flywheel dashboard: polls the JSON API and draws plain SVG charts.
// No framework and no build step; everything here runs as served.
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const state = { config: null, sessionId: null, timer: null };

  // Signals in a session hash that are worth a second look when non-zero.
  const HOT_FIELDS = new Set([
    "repeated_question_count", "correction_count", "long_silence_count", "low_confidence_count",
    "cta_not_clicked_count", "negative_feedback_count", "slow_response_count", "fsm_stalled",
  ]);
  const BOOL_FIELDS = new Set(["carted", "no_order", "no_conversion", "fsm_stalled", "flagged"]);
  const SESSION_GROUPS = [
    ["Conversation", ["event_count", "user_turns", "assistant_turns", "repeated_question_count",
      "correction_count", "long_silence_count", "slow_response_count"]],
    ["Intent", ["low_confidence_count", "min_intent_confidence"]],
    ["Calls to action", ["cta_sent_count", "cta_clicked_count", "cta_not_clicked_count"]],
    ["Conversion", ["carted", "order_count", "no_order", "no_conversion"]],
    ["Conversation state", ["fsm_state_final", "fsm_transitions", "max_stall_turns", "fsm_stalled"]],
    ["Feedback", ["negative_feedback_count", "positive_feedback_count"]],
    ["Session", ["user_id", "model_version", "session_start_ms", "session_end_ms", "updated_ms", "version"]],
  ];
  const SESSION_HEADER_FIELDS = new Set(["session_id", "status", "reasons", "flagged"]);

  // ---------- small helpers ----------
  const byTestId = (id, root = document) => root.querySelector(`[data-testid="${id}"]`);
  const color = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function html(tag, attrs = {}, children = []) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "text") node.textContent = value;
      else if (key.startsWith("data-") || key === "class" || key === "style") node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of [].concat(children)) if (child) node.append(child);
    return node;
  }

  const fmtInt = (n) => (n == null ? "–" : Number(n).toLocaleString("en-US"));
  const fmtPct = (r) => (r == null ? "–" : `${(r * 100).toFixed(1)}%`);
  const fmtCompact = (n) => (n >= 1e6 ? `${+(n / 1e6).toFixed(1)}M` : n >= 1e3 ? `${+(n / 1e3).toFixed(1)}k` : `${+n.toFixed(2)}`);
  const pad2 = (n) => String(n).padStart(2, "0");
  const hhmm = (ms) => { const d = new Date(ms); return `${pad2(d.getUTCHours())}:${pad2(d.getUTCMinutes())}`; };
  const hhmmss = (ms) => `${hhmm(ms)}:${pad2(new Date(ms).getUTCSeconds())}`;
  const isoUtc = (ms) => new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");

  function setFigure(testId, value, text) {
    const node = byTestId(testId);
    if (!node) return;
    node.dataset.value = value == null ? "" : String(value);
    node.textContent = text;
  }

  async function getJSON(path) {
    const response = await fetch(path, { cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(body.detail || `${response.status} ${response.statusText}`);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function size(node) {
    const box = node.getBoundingClientRect();
    return { w: Math.max(Math.round(box.width), 120), h: Math.max(Math.round(box.height), 30) };
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  function niceScale(max, count = 4) {
    if (!(max > 0)) return { top: 1, ticks: [0, 1] };
    const raw = max / count;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const norm = raw / mag;
    let step = (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * mag;
    if (Number.isInteger(max) && step < 1) step = 1;
    const top = Math.ceil(max / step - 1e-9) * step;
    const ticks = [];
    for (let v = 0; v <= top + step / 2; v += step) ticks.push(+v.toFixed(10));
    return { top, ticks };
  }

  // ---------- charts ----------
  function timeChart(node, rows, series, { kind = "line" } = {}) {
    clear(node);
    const { w, h } = size(node);
    node.setAttribute("viewBox", `0 0 ${w} ${h}`);
    const m = { l: 44, r: 10, t: 8, b: 22 };
    const iw = w - m.l - m.r;
    const ih = h - m.t - m.b;
    const n = rows.length;
    const max = Math.max(0, ...series.flatMap((s) => rows.map((r) => r[s.key] || 0)));
    const { top, ticks } = niceScale(max);
    const y = (v) => m.t + ih - (v / top) * ih;
    const slot = iw / Math.max(n, 1);
    const x = (i) => m.l + slot * (i + 0.5);

    for (const t of ticks) {
      node.append(svg("line", { class: "gridline", x1: m.l, x2: w - m.r, y1: y(t), y2: y(t) }));
      node.append(svg("text", { x: m.l - 6, y: y(t) + 4, "text-anchor": "end" }, fmtCompact(t)));
    }
    node.append(svg("line", { class: "axis", x1: m.l, x2: w - m.r, y1: y(0), y2: y(0) }));
    const every = [1, 5, 10, 15, 30, 60, 120, 240].find((k) => n / k <= 7) || 480;
    rows.forEach((r, i) => {
      if (r.minute % every === 0) {
        node.append(svg("text", { x: x(i), y: h - 6, "text-anchor": "middle" }, hhmm(r.ts_ms)));
      }
    });

    if (kind === "columns") {
      const s = series[0];
      const bw = Math.max(1, slot * 0.7);
      rows.forEach((r, i) => {
        const v = r[s.key] || 0;
        if (v > 0) {
          node.append(svg("rect", { x: x(i) - bw / 2, y: y(v), width: bw, height: y(0) - y(v), rx: Math.min(2, bw / 2), fill: s.color }));
        }
      });
    } else {
      series.forEach((s, index) => {
        const points = rows.map((r, i) => `${x(i).toFixed(1)},${y(r[s.key] || 0).toFixed(1)}`);
        if (!points.length) return;
        if (index === 0) {
          node.append(svg("path", {
            d: `M${x(0)},${y(0)} L${points.join(" L")} L${x(n - 1)},${y(0)} Z`, fill: s.color, opacity: 0.08,
          }));
        }
        // The newest minute is still filling up: draw its segment dashed.
        const line = { fill: "none", stroke: s.color, "stroke-width": 2, "stroke-linejoin": "round", "stroke-linecap": "round" };
        node.append(svg("path", { d: `M${points.slice(0, Math.max(n - 1, 1)).join(" L")}`, ...line }));
        if (n > 1) node.append(svg("path", { d: `M${points[n - 2]} L${points[n - 1]}`, ...line, "stroke-dasharray": "3 4", opacity: 0.7 }));
        const last = rows[n - 1][s.key] || 0;
        node.append(svg("circle", { cx: x(n - 1), cy: y(last), r: 3, fill: s.color }));
      });
    }
    // Hover targets: one per minute, with the minute's figures as a tooltip.
    rows.forEach((r, i) => {
      const target = svg("rect", { x: m.l + slot * i, y: m.t, width: slot, height: ih, fill: "transparent" });
      const lines = series.map((s) => `${s.label}: ${fmtInt(r[s.key] || 0)}`);
      target.append(svg("title", {}, `${hhmm(r.ts_ms)} UTC\n${lines.join("\n")}`));
      node.append(target);
    });
  }

  function sparkline(node, rows, key) {
    clear(node);
    const { w, h } = size(node);
    node.setAttribute("viewBox", `0 0 ${w} ${h}`);
    const values = rows.map((r) => r[key] || 0);
    const max = Math.max(1, ...values);
    const x = (i) => (values.length > 1 ? (i / (values.length - 1)) * w : w / 2);
    const y = (v) => h - 2 - (v / max) * (h - 4);
    const points = values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" L");
    node.append(svg("path", { d: `M0,${h} L${points} L${w},${h} Z`, fill: "currentColor", opacity: 0.12 }));
    node.append(svg("path", { d: `M${points}`, fill: "none", stroke: "currentColor", "stroke-width": 1.5 }));
  }

  // items: [{key, label, value, text, count?, color}] drawn as labelled horizontal bars.
  function barChart(node, items, emptyText) {
    clear(node);
    const rowH = 28;
    const height = Math.max(items.length * rowH + 6, 60);
    node.style.height = `${height}px`;
    const { w } = size(node);
    node.setAttribute("viewBox", `0 0 ${w} ${height}`);
    if (!items.length) {
      node.append(svg("text", { class: "empty", x: w / 2, y: height / 2 + 4, "text-anchor": "middle" }, emptyText));
      return;
    }
    const labelW = Math.min(170, w * 0.42);
    const valueW = 64;
    const trackW = Math.max(20, w - labelW - valueW - 8);
    const max = Math.max(...items.map((it) => it.value || 0)) || 1;
    items.forEach((it, i) => {
      const top = i * rowH + 3;
      const g = svg("g", { "data-key": it.key, "data-value": it.value ?? "", "data-count": it.count ?? "" });
      g.append(svg("text", { class: "bar-label", x: 0, y: top + 16 }, it.label));
      g.append(svg("rect", { class: "track", x: labelW, y: top + 6, width: trackW, height: 12, rx: 6 }));
      const bw = Math.max(it.value > 0 ? 3 : 0, (it.value / max) * trackW);
      g.append(svg("rect", { x: labelW, y: top + 6, width: bw, height: 12, rx: 6, fill: it.color }));
      g.append(svg("text", { class: "bar-value", x: w, y: top + 16, "text-anchor": "end" }, it.text));
      g.append(svg("title", {}, `${it.label}: ${it.text}`));
      node.append(g);
    });
  }

  // ---------- sections ----------
  function renderSummary(summary, minutes) {
    const t = summary.totals;
    const win = minutes.window_totals;
    const span = `last ${minutes.count} min`;
    setFigure("kpi-events", t.events, fmtInt(t.events));
    setFigure("kpi-events-note", win.events, `${fmtInt(win.events)} in ${span}`);
    setFigure("kpi-explicit-signals", t.explicit_signals, fmtInt(t.explicit_signals));
    setFigure("kpi-explicit-signals-note", win.explicit_signals, `${fmtInt(win.explicit_signals)} in ${span}`);
    setFigure("kpi-implicit-signals", t.implicit_signals, fmtInt(t.implicit_signals));
    setFigure("kpi-implicit-signals-note", win.implicit_signals, `${fmtInt(win.implicit_signals)} in ${span}`);
    setFigure("kpi-negative-rate", summary.rates.negative_feedback_rate, fmtPct(summary.rates.negative_feedback_rate));
    setFigure("kpi-negative-rate-note", t.negative_feedback, `${fmtInt(t.negative_feedback)} of ${fmtInt(t.explicit_signals)} feedback events`);
    setFigure("kpi-flagged-rate", summary.rates.flagged_rate, fmtPct(summary.rates.flagged_rate));
    setFigure("kpi-flagged-rate-note", t.sessions_flagged, `${fmtInt(t.sessions_flagged)} of ${fmtInt(t.sessions_closed)} closed sessions`);
    setFigure("kpi-dlq", t.dlq, fmtInt(t.dlq));
    const [topReason, topCount] = Object.entries(summary.dlq_by_reason).sort((a, b) => b[1] - a[1])[0] || [];
    setFigure("kpi-dlq-note", topReason ?? "", topReason ? `most: ${topReason} (${fmtInt(topCount)})` : "nothing rejected");

    const flaggedColor = color("--c-flagged");
    barChart(byTestId("flagged-reasons"), Object.entries(summary.flagged_by_reason)
      .sort((a, b) => b[1].count - a[1].count)
      .map(([reason, r]) => ({ key: reason, label: reason, value: r.rate ?? 0, count: r.count, text: fmtPct(r.rate), color: flaggedColor })),
    "no session flagged yet");
    const dlqColor = color("--c-dlq");
    barChart(byTestId("dlq-reasons"), Object.entries(summary.dlq_by_reason)
      .sort((a, b) => b[1] - a[1])
      .map(([reason, count]) => ({ key: reason, label: reason, value: count, count, text: fmtInt(count), color: dlqColor })),
    "nothing dead-lettered");
    const implicitColor = color("--c-implicit");
    barChart(byTestId("implicit-signals"), Object.entries(summary.implicit_by_signal)
      .sort((a, b) => b[1] - a[1])
      .map(([signal, count]) => ({ key: signal, label: signal, value: count, count, text: fmtInt(count), color: implicitColor })),
    "no implicit signal yet");

    for (const [field, value] of Object.entries(summary.pool)) setFigure(`pool-${field}`, value, fmtInt(value));
    setFigure("pool-added-total", t.pool_samples_added, fmtInt(t.pool_samples_added));
    setFigure("pool-added-window", win.pool_samples_added, `${fmtInt(win.pool_samples_added)} added in ${span}`);
  }

  function legendItems(node, series, totals) {
    clear(node);
    for (const s of series) {
      node.append(html("span", { class: "item" }, [
        html("span", { class: "swatch", style: `--swatch: ${s.color}` }),
        html("span", { text: s.label }),
        html("span", { class: "num", "data-testid": "minutes-total", "data-key": s.key, "data-value": totals[s.key], text: fmtInt(totals[s.key]) }),
      ]));
    }
  }

  function renderMinutes(minutes) {
    const rows = minutes.minutes;
    const events = [{ key: "events", label: "events", color: color("--c-events") }];
    const signals = [
      { key: "explicit_signals", label: "explicit signals", color: color("--c-explicit") },
      { key: "implicit_signals", label: "implicit signals", color: color("--c-implicit") },
      { key: "negative_feedback", label: "negative feedback", color: color("--c-negative") },
    ];
    for (const [testId, series, legendId] of [["minutes-chart", events, "minutes-legend"], ["signals-chart", signals, "signals-legend"]]) {
      const chart = byTestId(testId);
      chart.dataset.endMinute = minutes.end_minute;
      chart.dataset.count = minutes.count;
      timeChart(chart, rows, series);
      legendItems(byTestId(legendId), series, minutes.window_totals);
    }
    const first = rows[0].ts_ms;
    const last = rows[rows.length - 1].ts_ms;
    setFigure("minutes-range", minutes.end_minute, `${hhmm(first)}–${hhmm(last)} UTC, totals over the window`);
    const pool = byTestId("pool-chart");
    pool.dataset.endMinute = minutes.end_minute;
    timeChart(pool, rows, [{ key: "pool_samples_added", label: "samples added", color: color("--c-pool") }], { kind: "columns" });
    timeChart(byTestId("flagged-chart"), rows, [{ key: "sessions_flagged", label: "sessions flagged", color: color("--c-flagged") }], { kind: "columns" });
    timeChart(byTestId("dlq-chart"), rows, [{ key: "dlq", label: "dead-lettered", color: color("--c-dlq") }], { kind: "columns" });
    document.querySelectorAll("svg[data-spark]").forEach((node) => sparkline(node, rows, node.dataset.spark));
  }

  function meter(value, fill, testField, raw) {
    return html("div", { class: "meter", "data-field": testField, "data-value": raw ?? "" }, [
      html("span", { class: "track" }, html("span", { class: "fill", style: `width:${Math.min(100, (value || 0) * 100)}%;background:${fill}` })),
      html("span", { class: "val", text: fmtPct(raw) }),
    ]);
  }

  function renderModels(data) {
    const stableColor = color("--c-stable");
    const canaryColor = color("--c-canary");
    const bar = byTestId("traffic-share");
    clear(bar);
    const live = data.models.filter((mv) => mv.traffic_share != null && mv.traffic_share > 0);
    for (const mv of live) {
      const part = html("span", { style: `width:${mv.traffic_share * 100}%;background:${mv.role === "canary" ? canaryColor : stableColor}` });
      part.title = `${mv.version}: ${fmtPct(mv.traffic_share)} of traffic`;
      bar.append(part);
    }
    const parts = [];
    if (data.stable) parts.push(`stable ${data.stable}`);
    if (data.canary) parts.push(`canary ${data.canary} at ${fmtPct(data.canary_share)}`);
    setFigure("registry-summary", data.canary_share, parts.length ? parts.join(" · ") : "no model registered yet");

    const body = byTestId("models-body");
    clear(body);
    if (!data.models.length) {
      body.append(html("tr", {}, html("td", { class: "muted", colSpan: 6, text: "No model version has served a closed session yet." })));
    }
    const negativeColor = color("--c-negative");
    const flaggedColor = color("--c-flagged");
    for (const mv of data.models) {
      const roleColor = mv.role === "canary" ? canaryColor : mv.role === "stable" ? stableColor : "#94a3b8";
      body.append(html("tr", { "data-testid": "model-row", "data-version": mv.version, "data-role": mv.role }, [
        html("td", { class: "version", text: mv.version }),
        html("td", {}, html("span", { class: `role ${mv.role}`, text: mv.role })),
        html("td", {}, meter(mv.traffic_share, roleColor, "traffic_share", mv.traffic_share)),
        html("td", { class: "r", "data-field": "sessions", "data-value": mv.sessions, text: fmtInt(mv.sessions) }),
        html("td", {}, meter(mv.negative_rate, negativeColor, "negative_rate", mv.negative_rate)),
        html("td", {}, meter(mv.flagged_rate, flaggedColor, "flagged_rate", mv.flagged_rate)),
      ]));
    }
    renderCanaryCheck(data.canary_check);
    const log = byTestId("registry-log");
    clear(log);
    setFigure("registry-log-count", data.log.length, `(${data.log.length})`);
    for (const entry of data.log) log.append(html("li", { text: JSON.stringify(entry) }));
  }

  // The latest automatic canary check: both rates over the same window, and how far the
  // sequential test's statistic is from its threshold.
  function renderCanaryCheck(check) {
    const el = byTestId("canary-check");
    el.dataset.action = check ? check.action || "" : "";
    if (!check || !check.canary || !check.stable) {
      el.textContent = check ? `last canary check: ${check.action} (${check.reason || ""})` : "";
      return;
    }
    const rate = (o) => `${(100 * o.negative_rate).toFixed(1)}% of ${fmtInt(o.sessions)}`;
    const when = check.at_ms ? ` at ${isoUtc(check.at_ms)}` : "";
    let text = `last canary check${when}: ${check.action}; negative sessions canary ${check.canary.version} ${rate(check.canary)}, stable ${check.stable.version} ${rate(check.stable)} since the canary started`;
    if (check.test) {
      text += `; log statistic ${check.test.log_statistic.toFixed(2)} / threshold ${check.test.log_threshold.toFixed(2)}`;
      el.dataset.logStatistic = check.test.log_statistic;
    }
    el.textContent = text;
  }

  function displayValue(field, raw) {
    if (raw === "" || raw == null) return "–";
    if (BOOL_FIELDS.has(field)) return raw === "1" ? "yes" : raw === "0" ? "no" : raw;
    if (field.endsWith("_ms") && /^\d+$/.test(raw)) return isoUtc(Number(raw));
    if (field === "min_intent_confidence" && !Number.isNaN(Number(raw))) return Number(raw).toFixed(2);
    return raw;
  }

  function renderSession(data) {
    const result = byTestId("session-result");
    clear(result);
    result.dataset.sessionId = data.session_id;
    const head = html("div", { class: "session-head" }, [
      html("span", { class: "sid", "data-testid": "session-id", text: data.session_id }),
      html("span", { class: `badge ${data.status || ""}`, "data-testid": "session-status", "data-value": data.status || "", text: data.status || "unknown status" }),
    ]);
    if (data.reasons.length) {
      for (const reason of data.reasons) head.append(html("span", { class: "badge reason", "data-testid": "session-reason", "data-value": reason, text: reason }));
    } else {
      head.append(html("span", { class: "badge clean", text: "not flagged" }));
    }
    const notes = [];
    if (data.updated_ms) notes.push(`updated ${isoUtc(data.updated_ms)}`);
    if (data.ttl_ms != null) notes.push(`expires in ${(data.ttl_ms / 86400000).toFixed(1)} d`);
    head.append(html("span", { class: "hint", text: notes.join(" · ") }));
    result.append(head);

    const fields = data.fields;
    const shown = new Set(SESSION_HEADER_FIELDS);
    const groups = html("div", { class: "groups" });
    const addGroup = (title, names) => {
      const dl = html("dl");
      for (const name of names) {
        if (!(name in fields)) continue;
        shown.add(name);
        const raw = fields[name];
        const hot = HOT_FIELDS.has(name) && raw !== "" && raw !== "0";
        dl.append(html("dt", { text: name.replace(/_/g, " ") }));
        dl.append(html("dd", { class: hot ? "hot" : "", "data-field": name, "data-value": raw, text: displayValue(name, raw) }));
      }
      const wide = title === "Session" || title === "Other";
      if (dl.children.length) groups.append(html("section", { class: wide ? "group span2" : "group" }, [html("h3", { text: title }), dl]));
    };
    for (const [title, names] of SESSION_GROUPS) addGroup(title, names);
    addGroup("Other", Object.keys(fields).filter((name) => !shown.has(name)).sort());
    result.append(groups);
    result.hidden = false;
  }

  async function loadSession(sessionId, { quiet = false } = {}) {
    const error = byTestId("session-error");
    try {
      const data = await getJSON(`api/session/${encodeURIComponent(sessionId)}`);
      error.hidden = true;
      renderSession(data);
    } catch (err) {
      if (quiet && err.status !== 404) throw err;
      byTestId("session-result").hidden = true;
      error.textContent = err.message;
      error.hidden = false;
    }
  }

  function showStatus(ok, message) {
    const pill = byTestId("connection-status");
    pill.dataset.state = ok ? "ok" : "error";
    pill.textContent = ok ? "live" : "Redis unreachable";
    const banner = byTestId("error-banner");
    banner.hidden = ok;
    banner.textContent = ok ? "" : message;
  }

  async function refresh() {
    const n = state.config.history_minutes;
    try {
      const [summary, minutes, models] = await Promise.all([
        getJSON("api/summary"), getJSON(`api/minutes?n=${n}`), getJSON("api/models"),
      ]);
      renderSummary(summary, minutes);
      renderMinutes(minutes);
      renderModels(models);
      if (state.sessionId) await loadSession(state.sessionId, { quiet: true });
      showStatus(true);
      setFigure("last-updated", summary.now_ms, `updated ${hhmmss(summary.now_ms)} UTC`);
      document.body.dataset.loaded = "true";
    } catch (err) {
      showStatus(false, err.message);
    } finally {
      clearTimeout(state.timer);
      state.timer = setTimeout(refresh, state.config.refresh_ms);
    }
  }

  async function start() {
    try {
      state.config = await getJSON("api/config");
    } catch (err) {
      showStatus(false, `cannot load /api/config: ${err.message}`);
      setTimeout(start, 5000);
      return;
    }
    byTestId("key-prefix").textContent = `${state.config.key_prefix}*`;
    document.getElementById("session-key-hint").textContent = `${state.config.key_prefix}session:<id>`;
    const fromHash = new URLSearchParams(location.hash.slice(1)).get("session");
    if (fromHash) {
      state.sessionId = fromHash;
      byTestId("session-input").value = fromHash;
      loadSession(fromHash);
    }
    byTestId("session-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const id = byTestId("session-input").value.trim();
      if (!id) return;
      state.sessionId = id;
      history.replaceState(null, "", `#session=${encodeURIComponent(id)}`);
      loadSession(id);
    });
    let resizeTimer;
    window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(refresh, 200); });
    refresh();
  }

  start();
})();
