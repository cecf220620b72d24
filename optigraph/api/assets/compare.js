// The compare page (/ui/compare): one prompt through several approaches, answers side by side as they
// stream. Each column is one POST /ui/api/chat/completions (stream, with usage); past comparisons are
// kept in localStorage. Model text is only ever set as textContent, never parsed as HTML.
"use strict";
(() => {
  const HISTORY_KEY = "optigraph.compare.history";
  const HISTORY_MAX = 50;
  const ANSWER_MAX = 20000;
  const $ = (selector) => document.querySelector(selector);

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function chosen() {
    const picked = [...document.querySelectorAll("#approaches input[name=approach]:checked")].map((e) => e.value);
    const typed = $("#expressions").value.split("\n").map((s) => s.trim()).filter(Boolean);
    return [...new Set([...picked, ...typed])];
  }

  function loadHistory() {
    try {
      const items = JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]");
      return Array.isArray(items) ? items : [];
    } catch (e) {
      return [];
    }
  }

  function saveHistory(items) {
    localStorage.setItem(HISTORY_KEY, JSON.stringify(items.slice(0, HISTORY_MAX)));
  }

  // One column: its header, the answer as it streams, and the run's numbers.
  function column(expression) {
    const col = el("div", { class: "column", "data-expression": expression, "data-state": "waiting" });
    col.append(el("h3", {}, ""));
    col.querySelector("h3").append(el("code", {}, expression));
    const answer = el("pre", { class: "answer" }, "");
    const stats = el("dl", { class: "stats" });
    const fields = {};
    for (const [key, label] of [["status", "Status"], ["calls", "Calls"], ["tokens", "Tokens"],
      ["first", "First token"], ["time", "Time"], ["run", "Trace"]]) {
      stats.append(el("dt", {}, label));
      fields[key] = el("dd", { class: "stat-" + key }, "");
      stats.append(fields[key]);
    }
    col.append(answer, stats);
    return { col, answer, fields, record: { expression, answer: "", status: "waiting" } };
  }

  function show(c, record) {
    Object.assign(c.record, record);
    const r = c.record;
    c.col.setAttribute("data-state", r.status);
    c.fields.status.textContent = r.status + (r.error ? ": " + r.error : "");
    c.fields.status.className = "stat-status status-" + (r.status === "done" ? "completed" : r.status);
    if (r.calls !== undefined) c.fields.calls.textContent = String(r.calls);
    if (r.usage) {
      c.fields.tokens.textContent =
        `${r.usage.total_tokens} (prompt ${r.usage.prompt_tokens}, completion ${r.usage.completion_tokens})`;
      c.col.setAttribute("data-total-tokens", String(r.usage.total_tokens));
    }
    if (r.first_ms !== undefined) c.fields.first.textContent = Math.round(r.first_ms) + " ms";
    if (r.ms !== undefined) c.fields.time.textContent = Math.round(r.ms) + " ms";
    if (r.run_id && !c.fields.run.firstChild) {
      c.col.setAttribute("data-run-id", r.run_id);
      c.fields.run.append(el("a", { class: "trace-link", href: "/ui/runs/" + encodeURIComponent(r.run_id) }, r.run_id));
    }
    if (r.calls !== undefined) c.col.setAttribute("data-calls", String(r.calls));
  }

  // Streams one expression's answer into its column; resolves with what the column shows.
  async function runColumn(c, prompt, model) {
    const started = performance.now();
    show(c, { status: "streaming" });
    const body = {
      model,
      messages: [{ role: "user", content: prompt }],
      stream: true,
      stream_options: { include_usage: true },
      optillm_approach: c.record.expression,
    };
    try {
      const response = await fetch("/ui/api/chat/completions", {
        method: "POST",
        credentials: "same-origin",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      const runId = response.headers.get("x-optigraph-run-id");
      if (runId) show(c, { run_id: runId });
      if (!response.ok) {
        let message = response.status + " " + response.statusText;
        try {
          message = (await response.json()).error.message || message;
        } catch (e) { /* not JSON: keep the status line */ }
        if (response.status === 401) message += " (reload the page to log in again)";
        show(c, { status: "failed", error: message, ms: performance.now() - started });
        return c.record;
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let finished = false;
      while (!finished) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data:")) continue;
            const data = line.slice(5).trim();
            if (data === "[DONE]") {
              finished = true;
              continue;
            }
            const chunk = JSON.parse(data);
            if (chunk.error) {
              show(c, { status: "failed", error: chunk.error.message || "the run failed" });
              continue;
            }
            for (const choice of chunk.choices || []) {
              const piece = choice.index === 0 && choice.delta && choice.delta.content;
              if (piece) {
                if (c.record.first_ms === undefined) show(c, { first_ms: performance.now() - started });
                c.answer.textContent += piece;
                c.record.answer = c.answer.textContent.slice(0, ANSWER_MAX);
              }
            }
            if (chunk.usage) show(c, { usage: chunk.usage });
            if (chunk.optigraph) show(c, { calls: chunk.optigraph.upstream_calls, run_id: chunk.optigraph.run_id });
          }
        }
      }
      show(c, { status: c.record.status === "failed" ? "failed" : "done", ms: performance.now() - started });
    } catch (e) {
      show(c, { status: "failed", error: String(e), ms: performance.now() - started });
    }
    return c.record;
  }

  function renderHistory() {
    const list = $("#history");
    list.replaceChildren();
    loadHistory().forEach((item, i) => {
      const li = el("li", { class: "history-item", "data-index": String(i) });
      const summary = item.columns.map((c) => c.expression).join(" vs ");
      li.append(el("span", { class: "history-when" }, (item.at || "").replace("T", " ").slice(0, 19) + " "));
      li.append(el("code", {}, summary));
      li.append(el("span", { class: "history-prompt" }, ": " + item.prompt.slice(0, 80)));
      const open = el("button", { type: "button", class: "history-open" }, "Show");
      open.addEventListener("click", () => showStored(item));
      li.append(open);
      list.append(li);
    });
  }

  // A past comparison, shown again from what was stored (nothing is re-run).
  function showStored(item) {
    $("#prompt").value = item.prompt;
    $("#model").value = item.model;
    const columns = $("#columns");
    columns.replaceChildren();
    columns.setAttribute("data-from-history", "true");
    for (const stored of item.columns) {
      const c = column(stored.expression);
      c.answer.textContent = stored.answer || "";
      show(c, stored);
      columns.append(c.col);
    }
  }

  async function compare(event) {
    event.preventDefault();
    const prompt = $("#prompt").value;
    const model = $("#model").value.trim();
    const expressions = chosen();
    if (!prompt.trim() || !model || !expressions.length) {
      $("#compare-note").textContent = "Type a prompt and a model, and pick at least one approach.";
      return;
    }
    $("#compare-note").textContent = "";
    $("#run-compare").disabled = true;
    const columns = $("#columns");
    columns.replaceChildren();
    columns.removeAttribute("data-from-history");
    columns.setAttribute("data-state", "running");
    const cols = expressions.map(column);
    for (const c of cols) columns.append(c.col);
    const results = await Promise.all(cols.map((c) => runColumn(c, prompt, model)));
    const items = loadHistory();
    items.unshift({ at: new Date().toISOString(), prompt, model, columns: results });
    saveHistory(items);
    renderHistory();
    columns.setAttribute("data-state", "done");
    $("#run-compare").disabled = false;
  }

  $("#compare-form").addEventListener("submit", compare);
  $("#clear-history").addEventListener("click", () => {
    localStorage.removeItem(HISTORY_KEY);
    renderHistory();
  });
  renderHistory();
})();
