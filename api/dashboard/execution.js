// An execution's page: its graph coloured by node state (live), a node's details on click, the
// nodes' timeline, cancel and retry, and the link to its flow run in the Prefect UI.
"use strict";
(function () {
  const WOS = (window.WOS = window.WOS || {});
  const $ = (id) => document.getElementById(id);
  const NODE_EVENTS = { "node.started": "running", "node.completed": "completed", "node.failed": "failed", "node.skipped": "skipped" };
  const END_EVENTS = ["execution.completed", "execution.failed", "execution.cancelled"];
  const STREAM_TYPES = [...Object.keys(NODE_EVENTS), "execution.queued", "execution.started", "execution.resumed", ...END_EVENTS];
  const JSON_SHOWN = 20000; // characters of a node's input/output shown in the details
  const SAFETY_POLL_MS = 15000;

  let page = null;

  function path(p) {
    return `api/executions/${encodeURIComponent(page.id)}${p}`;
  }

  /** Per node: its state, its log rows' facts, and the last event's (attempts, duration). */
  function nodeFacts(execution, logs, events) {
    const facts = {};
    const fact = (id) => (facts[id] ||= { state: "pending" });
    for (const row of logs) {
      if (!row.nodeId) continue;
      const f = fact(row.nodeId);
      if (row.status === "running") {
        f.started = row.timestamp;
        f.input = row.inputData;
        f.state = "running";
      } else {
        f.final = row;
        f.state = row.status === "error" ? "failed" : row.status;
      }
    }
    const results = execution.nodeResults && typeof execution.nodeResults === "object" ? execution.nodeResults : {};
    for (const [id, result] of Object.entries(results)) {
      if (!result || typeof result !== "object") continue;
      const f = fact(id);
      f.result = result;
      if (result.skipped) f.state = "skipped";
      else if (result.success === false) f.state = "failed";
      else if (result.success === true && f.state === "pending") f.state = "completed";
    }
    for (const [id, event] of Object.entries(events)) {
      const f = fact(id);
      f.event = event;
      const order = ["pending", "running", "completed", "failed", "skipped"];
      if (order.indexOf(NODE_EVENTS[event.type]) > order.indexOf(f.state)) f.state = NODE_EVENTS[event.type];
    }
    if (WOS.TERMINAL.has(execution.status)) {
      for (const f of Object.values(facts)) if (f.state === "running") f.state = "stopped";
    }
    return facts;
  }

  function states() {
    return Object.fromEntries(Object.entries(page.facts).map(([id, f]) => [id, f.state]));
  }

  function pretty(text) {
    if (text === null || text === undefined || text === "") return null;
    let shown = text;
    if (typeof text === "string") {
      try {
        shown = JSON.stringify(JSON.parse(text), null, 2);
      } catch (_) {
        shown = text;
      }
    } else {
      shown = JSON.stringify(text, null, 2);
    }
    return shown.length > JSON_SHOWN ? `${shown.slice(0, JSON_SHOWN)}\n… (${shown.length} characters)` : shown;
  }

  function nodeTiming(f) {
    const started = f.started || (f.final && f.final.timestamp && f.final.duration != null
      ? new Date(Date.parse(f.final.timestamp) - Number(f.final.duration)).toISOString() : null);
    const ms = f.final && f.final.duration != null ? Number(f.final.duration)
      : f.event && f.event.durationMs != null ? Number(f.event.durationMs) : null;
    const finished = f.final ? f.final.timestamp : null;
    return { started, finished, ms: Number.isFinite(ms) ? ms : null };
  }

  function renderDetails() {
    const box = $("node-details");
    const id = page.selected;
    const node = page.graph && page.graph.nodes.find((n) => n.id === id);
    if (!node) return;
    const f = page.facts[id] || { state: "pending" };
    const timing = nodeTiming(f);
    const attempts = (f.result && f.result.attempts) || (f.event && f.event.attempts) || (f.final ? 1 : null);
    const output = f.final && f.final.outputData ? f.final.outputData
      : f.result && f.result.outputData !== undefined ? f.result.outputData : null;
    const error = (f.final && f.final.error) || (f.result && f.result.error) || (f.event && f.event.error) || null;
    const rows = [
      ["State", WOS.statusBadge(f.state)],
      ["Node", `${node.label} (${node.type}, ${node.id})`],
      ["Attempts", attempts == null ? "–" : String(attempts)],
      ["Started", WOS.when(timing.started)],
      ["Finished", WOS.when(timing.finished)],
      ["Duration", timing.ms == null ? "–" : `${timing.ms} ms`],
    ];
    const list = WOS.el("dl");
    for (const [name, value] of rows) list.append(WOS.el("dt", { text: name }), WOS.el("dd", {}, value));
    const blocks = [["Error", error], ["Input", f.input || (f.final && f.final.inputData)], ["Output", output]];
    const parts = [WOS.el("h2", { text: node.label }), list];
    for (const [name, value] of blocks) {
      const shown = pretty(value);
      if (shown === null) continue;
      parts.push(WOS.el("h3", { text: name }), WOS.el("pre", { class: `json ${name.toLowerCase()}`, text: shown }));
    }
    box.replaceChildren(...parts);
  }

  /** Without a graph (an execution the service did not run): the nodes its logs name. */
  function nodesOfLogs() {
    const nodes = new Map();
    for (const row of page.logs) {
      if (row.nodeId && !nodes.has(row.nodeId)) {
        nodes.set(row.nodeId, { id: row.nodeId, type: row.nodeType || "", label: row.nodeLabel || row.nodeId });
      }
    }
    return [...nodes.values()];
  }

  function renderTimeline() {
    const spans = [];
    for (const node of page.graph ? page.graph.nodes : nodesOfLogs()) {
      const f = page.facts[node.id];
      if (!f) continue;
      const t = nodeTiming(f);
      if (!t.started) continue;
      const start = Date.parse(t.started);
      const end = t.ms != null ? start + t.ms : f.state === "running" ? Date.now() : start;
      spans.push({ node, state: f.state, start, end });
    }
    const box = $("timeline");
    if (!spans.length) {
      box.replaceChildren(WOS.el("p", { class: "hint", text: "No node has started yet." }));
      return;
    }
    const first = Math.min(...spans.map((s) => s.start));
    const total = Math.max(1, Math.max(...spans.map((s) => s.end)) - first);
    box.replaceChildren(...spans.sort((a, b) => a.start - b.start).map((s) => {
      const bar = WOS.el("div", { class: "bar", "data-state": s.state, title: `${s.end - s.start} ms` });
      bar.style.left = `${((s.start - first) / total) * 100}%`;
      bar.style.width = `${Math.max(0.5, ((s.end - s.start) / total) * 100)}%`;
      return WOS.el("div", { class: "lane", "data-node-id": s.node.id },
        WOS.el("span", { class: "lane-label", text: s.node.label }),
        WOS.el("div", { class: "track" }, bar),
        WOS.el("span", { class: "lane-ms", text: `${s.end - s.start} ms` }));
    }));
  }

  function renderHead() {
    const e = page.execution;
    $("execution-id").textContent = e.executionId;
    $("execution-workflow").textContent = e.workflowName || e.workflowId;
    $("execution-status").replaceChildren(WOS.statusBadge(e.status));
    $("execution-status").dataset.status = e.status;
    $("execution-times").textContent = `created ${WOS.when(e.createdAt)} · ran ${WOS.duration(e.startedAt, e.completedAt)}`
      + (e.mode ? ` · ${e.mode}` : "") + (e.attempts > 1 ? ` · attempt ${e.attempts}` : "");
    const p = e.progress;
    $("progress-bar").style.width = `${p.percentage}%`;
    $("progress-text").textContent = `${p.percentage}% · ${p.completedNodes} completed, ${p.failedNodes} failed, `
      + `${p.skippedNodes} skipped of ${p.totalNodes} nodes`;
    $("execution-error").textContent = e.error || "";
    const active = e.status === "pending" || e.status === "running";
    $("cancel-button").disabled = !active;
    $("retry-button").disabled = !(e.status === "failed" || e.status === "cancelled");
    const link = $("prefect-link");
    const url = typeof e.prefectUrl === "string" && /^https?:\/\//.test(e.prefectUrl) ? e.prefectUrl : null;
    link.hidden = url === null;
    if (url) link.href = url;
  }

  function render() {
    page.facts = nodeFacts(page.execution, page.logs, page.events);
    renderHead();
    if (page.elements) WOS.graph.paint(page.elements, states(), page.selected);
    renderDetails();
    renderTimeline();
  }

  async function load() {
    const current = page;
    const [execution, logs] = await Promise.all([WOS.api(path("")), WOS.api(path("/logs"))]);
    if (page !== current) return;
    page.execution = execution;
    page.logs = logs.logs;
    render();
    if (WOS.TERMINAL.has(execution.status)) stopLive();
  }

  async function refresh() {
    if (!page) return;
    try {
      await load();
      WOS.showError(null);
    } catch (error) {
      WOS.showError(error);
    }
  }

  function onEvent(type, data) {
    if (data.executionId !== page.id) return;
    if (NODE_EVENTS[type] && data.nodeId) {
      page.events[data.nodeId] = { ...data, type }; // one per node: bounded by the graph
      page.facts[data.nodeId] = { ...(page.facts[data.nodeId] || {}), state: NODE_EVENTS[type] };
      if (page.elements) WOS.graph.paint(page.elements, states(), page.selected);
    }
    if (END_EVENTS.includes(type)) {
      stopLive();
      refresh();
    } else {
      page.refresh();
    }
  }

  function stopLive() {
    if (page.source) page.source.close();
    clearInterval(page.poll);
    clearInterval(page.safety);
    page.source = page.poll = page.safety = null;
    WOS.setLive(page.execution && WOS.TERMINAL.has(page.execution.status) ? "ended" : "off");
  }

  async function act(button, call) {
    $(button).disabled = true;
    try {
      const answer = await call();
      $("action-message").textContent = answer.message || "";
      return answer;
    } catch (error) {
      $("action-message").textContent = error.message;
      return null;
    } finally {
      refresh();
    }
  }

  async function show(id) {
    page = { id, events: {}, facts: {}, logs: [], selected: null, elements: null, graph: null, source: null, poll: null };
    page.refresh = WOS.coalesced(refresh, 500); // re-reads the logs: at most twice a second
    for (const box of ["execution-error", "action-message", "progress-text", "execution-times"]) $(box).textContent = "";
    $("execution-id").textContent = id;
    $("execution-workflow").textContent = "";
    $("graph").replaceChildren();
    $("timeline").replaceChildren();
    $("node-details").replaceChildren(WOS.el("p", { class: "hint", text: "Click a node for its input, output, error, attempts and timings." }));
    const current = page;
    try {
      await load();
    } catch (error) {
      WOS.showError(error);
      return;
    }
    if (page !== current) return;
    try {
      page.graph = await WOS.api(path("/workflow"));
      page.elements = WOS.graph.render($("graph"), page.graph, (nodeId) => {
        page.selected = nodeId;
        render();
      });
      render();
    } catch (error) {
      if (error instanceof WOS.AuthError) return;
      $("graph").replaceChildren(WOS.el("p", { class: "hint", text: `No graph: ${error.message}` }));
    }
    if (page !== current || WOS.TERMINAL.has(page.execution.status)) return;
    page.source = WOS.subscribe(path("/events"), {}, STREAM_TYPES, onEvent, () => {
      page.poll = setInterval(page.refresh, 1000);
    });
    page.safety = setInterval(page.refresh, SAFETY_POLL_MS); // catches up on a missed event
  }

  function hide() {
    if (!page) return;
    stopLive();
    page.refresh.cancel();
    clearInterval(page.safety);
    page = null;
  }

  $("cancel-button").addEventListener("click", () => act("cancel-button", () => WOS.api(path("/cancel"), { method: "POST" })));
  $("retry-button").addEventListener("click", async () => {
    const answer = await act("retry-button", () => WOS.api(path("/retry"), { method: "POST", body: "{}" }));
    if (answer && answer.executionId) location.hash = `#/executions/${encodeURIComponent(answer.executionId)}`;
  });

  WOS.execution = { show, hide, nodeFacts };
})();
