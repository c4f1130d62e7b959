// The workflow graph: a layered layout (longest-path layers, barycentre ordering within them)
// computed here, drawn as SVG; each node's state is a data attribute the stylesheet colours.
"use strict";
(function () {
  const WOS = (window.WOS = window.WOS || {});
  const NS = "http://www.w3.org/2000/svg";
  const NODE_W = 176;
  const NODE_H = 50;
  const GAP_X = 64;
  const GAP_Y = 22;
  const PAD = 16;
  const SWEEPS = 4;
  const LABEL_CHARS = 22;

  /**
   * Layers and positions of `nodes` ({id}) joined by `connections` ({fromNodeId, toNodeId}):
   * a node sits one layer right of its furthest parent; within a layer nodes are ordered by
   * the mean position of their neighbours, sweeping down and up. Returns
   * {positions: Map(id -> {x, y}), edges, width, height}.
   */
  function layout(nodes, connections) {
    const ids = nodes.map((n) => n.id);
    const known = new Set(ids);
    const parents = new Map(ids.map((id) => [id, []]));
    const children = new Map(ids.map((id) => [id, []]));
    const edges = connections.filter(
      (c) => known.has(c.fromNodeId) && known.has(c.toNodeId) && c.fromNodeId !== c.toNodeId,
    );
    for (const e of edges) {
      children.get(e.fromNodeId).push(e.toNodeId);
      parents.get(e.toNodeId).push(e.fromNodeId);
    }
    // longest path from the roots, in topological order (Kahn)
    const waiting = new Map(ids.map((id) => [id, parents.get(id).length]));
    const layer = new Map();
    const queue = ids.filter((id) => waiting.get(id) === 0);
    for (const id of queue) layer.set(id, 0);
    for (let i = 0; i < queue.length; i++) {
      const id = queue[i];
      for (const child of children.get(id)) {
        layer.set(child, Math.max(layer.get(child) || 0, layer.get(id) + 1));
        waiting.set(child, waiting.get(child) - 1);
        if (waiting.get(child) === 0) queue.push(child);
      }
    }
    // a cycle (the service refuses them at submit) would leave nodes unplaced: one more layer
    const deepest = [...layer.values()].reduce((a, b) => Math.max(a, b), 0);
    const cyclic = ids.filter((id) => waiting.get(id) > 0);
    for (const id of cyclic) layer.set(id, deepest + 1);
    const layers = [];
    for (const id of ids) {
      const l = layer.get(id);
      while (layers.length <= l) layers.push([]);
      layers[l].push(id);
    }
    const order = new Map();
    const renumber = (ids_) => ids_.forEach((id, i) => order.set(id, i));
    layers.forEach(renumber);
    for (let sweep = 0; sweep < SWEEPS; sweep++) {
      const down = sweep % 2 === 0;
      const pass = down ? layers.slice(1) : layers.slice(0, -1).reverse();
      for (const ids_ of pass) {
        const centre = new Map();
        for (const id of ids_) {
          const near = down ? parents.get(id) : children.get(id);
          const sum = near.reduce((s, n) => s + order.get(n), 0);
          centre.set(id, near.length ? sum / near.length : order.get(id));
        }
        ids_.sort((a, b) => centre.get(a) - centre.get(b) || order.get(a) - order.get(b));
        renumber(ids_);
      }
    }
    const tallest = layers.reduce((m, l) => Math.max(m, l.length), 0);
    const positions = new Map();
    layers.forEach((ids_, l) => {
      const offset = (tallest - ids_.length) / 2;
      ids_.forEach((id, i) => {
        positions.set(id, { x: PAD + l * (NODE_W + GAP_X), y: PAD + (i + offset) * (NODE_H + GAP_Y) });
      });
    });
    return {
      positions,
      edges,
      width: PAD * 2 + Math.max(1, layers.length) * (NODE_W + GAP_X) - GAP_X,
      height: PAD * 2 + Math.max(1, tallest) * (NODE_H + GAP_Y) - GAP_Y,
    };
  }

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(NS, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function shorten(text) {
    return text.length > LABEL_CHARS ? `${text.slice(0, LABEL_CHARS - 1)}…` : text;
  }

  /**
   * Draw `graph` ({nodes: [{id, type, label}], connections}) into `container`; `onSelect(id)`
   * runs when a node is clicked (or Enter pressed on it). Returns Map(id -> node element).
   */
  function render(container, graph, onSelect) {
    const { positions, edges, width, height } = layout(graph.nodes, graph.connections);
    const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
    root.append(svg("title", {}, "Workflow graph"));
    const defs = svg("defs");
    const marker = svg("marker", {
      id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7,
      orient: "auto-start-reverse",
    });
    marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow" }));
    defs.append(marker);
    root.append(defs);
    for (const e of edges) {
      const from = positions.get(e.fromNodeId);
      const to = positions.get(e.toNodeId);
      const [x1, y1, x2, y2] = [from.x + NODE_W, from.y + NODE_H / 2, to.x, to.y + NODE_H / 2];
      const bend = Math.max(GAP_X / 2, Math.abs(x2 - x1) / 2);
      root.append(svg("path", {
        class: "edge",
        d: `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`,
        "marker-end": "url(#arrow)",
        "data-from": e.fromNodeId,
        "data-to": e.toNodeId,
      }));
      const label = [e.branch, e.inputPort].filter(Boolean).join(" → ");
      if (label) {
        root.append(svg("text", { class: "edge-label", x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 4 }, label));
      }
    }
    const elements = new Map();
    for (const node of graph.nodes) {
      const { x, y } = positions.get(node.id);
      const group = svg("g", {
        class: "node", "data-node-id": node.id, "data-state": "pending",
        transform: `translate(${x} ${y})`, tabindex: 0, role: "button",
      });
      group.append(svg("title", {}, `${node.label} (${node.type}, ${node.id})`));
      group.append(svg("rect", { width: NODE_W, height: NODE_H, rx: 8 }));
      group.append(svg("text", { class: "node-label", x: 12, y: 21 }, shorten(node.label)));
      group.append(svg("text", { class: "node-type", x: 12, y: 39 }, shorten(`${node.type} · ${node.id}`)));
      group.addEventListener("click", () => onSelect(node.id));
      group.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") onSelect(node.id);
      });
      elements.set(node.id, group);
      root.append(group);
    }
    container.replaceChildren(root);
    return elements;
  }

  /** Colour each node by `states[id]` (pending when absent) and mark the selected one. */
  function paint(elements, states, selected) {
    for (const [id, group] of elements) {
      group.setAttribute("data-state", states[id] || "pending");
      group.classList.toggle("selected", id === selected);
    }
  }

  WOS.graph = { layout, render, paint };
})();
