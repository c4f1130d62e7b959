// The dashboard's shell: the API key, calls to the API, live streams, the executions list and
// the hash router (#/ is the list, #/executions/<id> an execution's page).
"use strict";
(function () {
  const WOS = (window.WOS = window.WOS || {});
  const KEY = "wos.apiKey";
  const TERMINAL = new Set(["completed", "failed", "cancelled"]);
  const EXECUTION_EVENTS = [
    "execution.queued", "execution.started", "execution.resumed",
    "execution.completed", "execution.failed", "execution.cancelled",
  ];
  const $ = (id) => document.getElementById(id);

  class AuthError extends Error {}

  function apiKey() {
    return sessionStorage.getItem(KEY) || "";
  }

  /** A JSON call to the API with the key; 401 asks for a key and throws AuthError. */
  async function api(path, options = {}) {
    const headers = { Accept: "application/json" };
    if (apiKey()) headers["X-API-Key"] = apiKey();
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, { ...options, headers });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (response.status === 401) {
      askForKey(apiKey() ? "The service refused that key." : "");
      throw new AuthError("API key needed");
    }
    if (!response.ok) {
      const error = new Error((body && body.detail) || `${response.status} ${response.statusText}`);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function setLive(mode) {
    const live = $("live");
    live.dataset.mode = mode;
    live.textContent = { live: "live", polling: "polling", connecting: "connecting…", ended: "ended", off: "offline" }[mode] || mode;
  }

  /**
   * An EventSource on `path` (the key as ?api_key=, as browsers cannot send headers on it)
   * calling onEvent(type, data) for each of `types`; onDown() once the stream cannot be opened
   * (the caller polls instead). Returns the source (close() it when leaving the page).
   */
  function subscribe(path, params, types, onEvent, onDown) {
    const query = new URLSearchParams(params);
    if (apiKey()) query.set("api_key", apiKey());
    const source = new EventSource(`${path}?${query}`);
    setLive("connecting");
    source.onopen = () => setLive("live");
    for (const type of types) {
      source.addEventListener(type, (message) => {
        let data = null;
        try {
          data = JSON.parse(message.data);
        } catch (_) {
          return;
        }
        onEvent(type, data);
      });
    }
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        setLive("polling");
        onDown();
      } else {
        setLive("connecting");
      }
    };
    return source;
  }

  /** Runs `load` at most once at a time; a request made meanwhile runs it once more after. */
  function coalesced(load, delayMs) {
    let timer = null;
    let running = false;
    let again = false;
    const run = async () => {
      timer = null;
      if (running) {
        again = true;
        return;
      }
      running = true;
      try {
        await load();
      } finally {
        running = false;
        if (again) {
          again = false;
          schedule();
        }
      }
    };
    const schedule = () => {
      if (timer === null) timer = setTimeout(run, delayMs);
    };
    schedule.cancel = () => clearTimeout(timer);
    return schedule;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (name === "text") node.textContent = value;
      else if (value !== null && value !== undefined) node.setAttribute(name, value);
    }
    node.append(...children);
    return node;
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : "–";
  }

  function duration(startIso, endIso) {
    if (!startIso) return "–";
    const ms = (endIso ? Date.parse(endIso) : Date.now()) - Date.parse(startIso);
    if (!Number.isFinite(ms) || ms < 0) return "–";
    if (ms < 1000) return `${ms} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
  }

  function statusBadge(status) {
    return el("span", { class: `status state-${status || "unknown"}`, text: status || "unknown" });
  }

  function showError(error) {
    if (error instanceof AuthError) return;
    $("page-error").textContent = error ? String(error.message || error) : "";
  }

  WOS.api = api;
  WOS.subscribe = subscribe;
  WOS.coalesced = coalesced;
  WOS.el = el;
  WOS.when = when;
  WOS.duration = duration;
  WOS.statusBadge = statusBadge;
  WOS.showError = showError;
  WOS.setLive = setLive;
  WOS.TERMINAL = TERMINAL;
  WOS.AuthError = AuthError;

  // --- the executions list ------------------------------------------------------------------

  const PAGE_SIZE = 25;
  const list = { filters: {}, cursors: [null], page: 0, source: null, poll: null, refresh: null };
  const knownWorkflows = new Map(); // workflow id -> name, for the filter's suggestions (bounded)

  function listParams() {
    const params = { limit: String(PAGE_SIZE) };
    if (list.filters.status) params.status = list.filters.status;
    if (list.filters.workflowId) params.workflowId = list.filters.workflowId;
    const before = list.cursors[list.page];
    if (before) params.before = before;
    return new URLSearchParams(params);
  }

  async function loadList() {
    let page;
    try {
      page = await api(`api/executions?${listParams()}`);
    } catch (error) {
      showError(error);
      return;
    }
    showError(null);
    $("count-pending").textContent = page.counts.pending;
    $("count-running").textContent = page.counts.running;
    list.cursors.length = list.page + 1;
    if (page.nextCursor) list.cursors.push(page.nextCursor);
    $("page-newer").disabled = list.page === 0;
    $("page-older").disabled = !page.nextCursor;
    $("page-number").textContent = `Page ${list.page + 1}`;
    const rows = page.executions.map((execution) => {
      if (knownWorkflows.size < 500) knownWorkflows.set(execution.workflowId, execution.workflowName);
      const link = el("a", { href: `#/executions/${encodeURIComponent(execution.executionId)}` });
      link.append(el("code", { text: execution.executionId }));
      return el(
        "tr",
        { "data-execution-id": execution.executionId, "data-status": execution.status },
        el("td", {}, link),
        el("td", {}, el("span", { text: execution.workflowName || "(inline workflow)" }),
          el("small", { text: execution.workflowId })),
        el("td", { class: "status-cell" }, statusBadge(execution.status)),
        el("td", { text: when(execution.createdAt) }),
        el("td", { text: duration(execution.startedAt, execution.completedAt) }),
      );
    });
    $("execution-rows").replaceChildren(...rows);
    $("list-empty").hidden = rows.length > 0;
    $("workflow-ids").replaceChildren(
      ...[...knownWorkflows].map(([id, name]) => el("option", { value: id, text: name || id })),
    );
  }

  function onListEvent(type, data) {
    // the event's own status at once, then the page and its counts from the API
    const row = document.querySelector(`tr[data-execution-id="${CSS.escape(data.executionId || "")}"]`);
    if (row) {
      const status = type.split(".")[1];
      const shown = { queued: "pending", started: "running", resumed: "running" }[status] || status;
      row.dataset.status = shown;
      row.querySelector(".status-cell").replaceChildren(statusBadge(shown));
    }
    list.refresh();
  }

  function showList(filters) {
    list.filters = filters;
    list.cursors = [null];
    list.page = 0;
    $("filter-status").value = filters.status || "";
    $("filter-workflow").value = filters.workflowId || "";
    list.refresh = coalesced(loadList, 250);
    loadList();
    const params = { types: EXECUTION_EVENTS.join(",") };
    if (filters.workflowId) params.workflowId = filters.workflowId;
    list.source = subscribe("api/events", params, EXECUTION_EVENTS, onListEvent, () => {
      list.poll = setInterval(list.refresh, 3000);
    });
  }

  function hideList() {
    if (list.source) list.source.close();
    if (list.refresh) list.refresh.cancel();
    clearInterval(list.poll);
    list.source = list.poll = null;
  }

  function turnPage(step) {
    const page = list.page + step;
    if (page < 0 || page >= list.cursors.length) return;
    list.page = page;
    loadList();
  }

  // --- key, router, start ---------------------------------------------------------------

  function showView(id) {
    for (const view of ["key-view", "list-view", "execution-view"]) $(view).hidden = view !== id;
    $("forget-key").hidden = !apiKey();
  }

  function leave() {
    hideList();
    WOS.execution.hide();
  }

  function askForKey(message) {
    leave();
    sessionStorage.removeItem(KEY);
    setLive("off");
    showView("key-view");
    $("key-error").textContent = message;
    $("key-input").focus();
  }

  function route() {
    leave();
    showError(null);
    const hash = location.hash || "#/";
    const match = hash.match(/^#\/executions\/([^/?#]+)/);
    if (match) {
      showView("execution-view");
      WOS.execution.show(decodeURIComponent(match[1]));
      return;
    }
    const query = new URLSearchParams(hash.split("?")[1] || "");
    showView("list-view");
    showList({ status: query.get("status") || "", workflowId: query.get("workflowId") || "" });
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("key-input").value.trim());
    $("key-input").value = "";
    route();
  });
  $("forget-key").addEventListener("click", () => askForKey(""));
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    if ($("filter-status").value) query.set("status", $("filter-status").value);
    if ($("filter-workflow").value.trim()) query.set("workflowId", $("filter-workflow").value.trim());
    const hash = `#/?${query}`;
    if (location.hash === hash) route();
    else location.hash = hash;
  });
  $("page-newer").addEventListener("click", () => turnPage(-1));
  $("page-older").addEventListener("click", () => turnPage(1));
  window.addEventListener("hashchange", route);
  route();
})();
