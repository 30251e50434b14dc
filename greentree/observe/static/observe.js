// greentree's live tree page: polls ./tree.json every second and redraws the trees.
// Plain JavaScript, no dependencies, no external requests; every text goes in via textContent.
"use strict";
(function () {
  const POLL_MS = 1000;
  const FLASH_MS = 5000;
  const TIMEOUT_MS = 4000;
  // Nested supervisors deeper than this start collapsed (?depth=N in the page's URL changes it).
  const OPEN_DEPTH = Number(new URLSearchParams(location.search).get("depth") || 1);
  const state = {
    polls: 0, errors: 0, doc: null, paused: false,
    restarts: new Map(),           // node key -> restarts seen at the last poll
    flashUntil: new Map(),         // node key -> time until which it is highlighted
    toggled: new Map(),            // node key -> true (open) / false (collapsed), set by the user
    flashes: 0,                    // restarts noticed since the page opened
  };
  window.greentree = state;        // for people (and tests) poking at the page from the console

  const $ = (id) => document.getElementById(id);
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function secs(v) {
    if (typeof v !== "number") return "–";
    if (v < 60) return v.toFixed(1) + " s";
    if (v < 3600) return (v / 60).toFixed(1) + " min";
    if (v < 86400) return (v / 3600).toFixed(1) + " h";
    return (v / 86400).toFixed(1) + " d";
  }
  function kindName(kind) {
    return String(kind || "supervisor").split("_").map((w) => w.charAt(0).toUpperCase() + w.slice(1)).join("");
  }
  function isOpen(key, depth) {
    return state.toggled.has(key) ? state.toggled.get(key) : depth <= OPEN_DEPTH;
  }

  // A child whose restart count went up since the last poll is highlighted for FLASH_MS.
  function noteRestarts(key, restarts, now) {
    const before = state.restarts.get(key);
    if (before !== undefined && restarts > before) {
      state.flashUntil.set(key, now + FLASH_MS);
      state.flashes += restarts - before;
    }
    state.restarts.set(key, restarts);
    return (state.flashUntil.get(key) || 0) > now;
  }

  function toggleButton(node, key, leaf) {
    const b = el("button", "toggle" + (leaf ? " leaf" : ""), "▾");
    b.type = "button";
    b.title = "collapse / expand";
    b.addEventListener("click", () => {
      const open = node.classList.toggle("collapsed") === false;
      state.toggled.set(key, open);
    });
    return b;
  }

  function supHeader(row, tree) {
    const i = tree.intensity || {};
    row.append(el("span", "tag", tree.strategy ? kindName(tree.kind) + " · " + tree.strategy : kindName(tree.kind)));
    row.append(el("span", "pill " + tree.state, tree.state));
    const counts = el("span", "counts");
    for (const [st, n] of Object.entries(tree.counts || {})) {
      if (n) counts.append(el("span", "count " + st, n + " " + st));
    }
    row.append(counts);
    const max = i.max_restarts || 0, recent = i.recent_restarts || 0;
    const meter = el("span", "meter" + (max && recent >= max ? " hot" : ""));
    const fill = el("i");
    fill.style.width = (max ? Math.min(100, (100 * recent) / max) : 0) + "%";
    meter.append(fill);
    meter.title = recent + " of " + max + " restarts allowed within " + i.max_seconds + " s";
    row.append(meter, el("span", "meta", recent + "/" + max + " in " + i.max_seconds + " s"));
    if (tree.zombies) row.append(el("span", "zombies", tree.zombies + " zombie" + (tree.zombies > 1 ? "s" : "")));
    if (tree.mailbox) row.append(el("span", "meta", "mailbox " + tree.mailbox));
    if (tree.exit) row.append(el("span", "exit crash", "exit: " + tree.exit));
  }

  function childInfo(row, c) {
    row.append(el("span", "tag", c.type + " · " + c.restart));
    if (c.state !== "running") row.append(el("span", "pill " + c.state, c.state));
    row.append(el("span", "restarts" + (c.restarts ? " some" : ""), "↻ " + c.restarts));
    if (c.uptime !== null && c.uptime !== undefined) row.append(el("span", "meta", "up " + secs(c.uptime)));
    if (c.last_exit) {
      const crash = !/^(normal|shutdown)$/.test(c.last_exit);
      const x = el("span", "exit" + (crash ? " crash" : ""), "last exit: " + c.last_exit);
      x.title = c.last_exit;
      row.append(x);
    }
  }

  function exitsTable(tree) {
    const exits = tree.recent_exits || [];
    if (!exits.length) return null;
    const d = el("details", "exits");
    const key = "exits:" + tree.key;
    d.open = state.toggled.get(key) === true;
    d.addEventListener("toggle", () => state.toggled.set(key, d.open));
    d.append(el("summary", null, "recent exits (" + exits.length + ")"));
    const t = el("table");
    for (const e of exits) {
      const tr = el("tr", e.kind);
      tr.append(el("td", null, secs(e.ago) + " ago"), el("td", "name", e.id), el("td", "kind", e.kind),
                el("td", "reason", e.reason));
      t.append(tr);
    }
    d.append(t);
    return d;
  }

  // One node: a root supervisor (child === null) or a child (with child.tree if it is a supervisor).
  function node(tree, child, depth, now) {
    const key = child ? child.key : tree.key;
    const li = el(child ? "li" : "section", "node " + (tree ? "sup " : "worker ") + (child ? child.state : tree.state));
    li.dataset.key = key;
    const row = el("div", "row");
    const kids = tree ? tree.children || [] : [];
    row.append(toggleButton(li, key, !tree || (!kids.length && !(tree.recent_exits || []).length)));
    row.append(el("span", "dot"));
    if (child) {
      li.dataset.id = child.id;
      li.dataset.state = child.state;
      li.dataset.restarts = child.restarts;
      if (noteRestarts(key, child.restarts, now)) li.classList.add("flash");
      row.append(el("span", "name", child.id));
      childInfo(row, child);
    } else {
      li.classList.add("root");
      row.append(el("span", "name", tree.name === null ? kindName(tree.kind) : tree.name));
    }
    if (tree) supHeader(row, tree);
    li.append(row);
    if (tree) {
      if (!isOpen(key, depth)) li.classList.add("collapsed");
      const ex = exitsTable(tree);
      if (ex) li.append(ex);
      const ul = el("ul", "children");
      for (const c of kids) {
        const n = node(c.tree || null, c, depth + 1, now);
        if (n.classList.contains("flash") || n.classList.contains("flash-inside")) li.classList.add("flash-inside");
        ul.append(n);
      }
      const more = (tree.total || 0) - kids.length;
      if (more > 0) ul.append(el("li", "more", "… and " + more + " more not listed (the counts above include them)"));
      if (ul.childNodes.length) li.append(ul);
    }
    return li;
  }

  function summary(doc) {
    const s = $("summary");
    s.textContent = "";
    let total = 0, sups = 0;
    const walk = (t) => { sups += 1; total += t.total || 0; for (const c of t.children || []) if (c.tree) walk(c.tree); };
    doc.trees.forEach(walk);
    const add = (label, value) => { const b = el("b", null, value); s.append(label, b, "  "); };
    add("pid ", doc.pid + " on " + doc.host);
    add("trees ", doc.trees.length);
    add("children ", total);
    add("restarts seen ", state.flashes);
  }

  function render(doc) {
    const now = Date.now();
    const main = $("trees");
    const frag = document.createDocumentFragment();
    if (!doc.trees.length) frag.append(el("div", "empty", "No supervision tree is running in this process."));
    for (const t of doc.trees) frag.append(node(t, null, 0, now));
    main.replaceChildren(frag);
    summary(doc);
  }

  function setStatus(cls, text) {
    const s = $("status");
    s.className = "status " + cls;
    s.textContent = text;
  }

  async function poll() {
    if (!state.paused) {
      try {
        // A server that stops answering must not freeze the page: give up on a request after a while.
        const abort = new AbortController();
        const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
        let r;
        try { r = await fetch("tree.json", { cache: "no-store", signal: abort.signal }); }
        finally { clearTimeout(timer); }
        if (!r.ok) throw new Error("HTTP " + r.status);
        const doc = await r.json();
        if (doc.version !== 1) throw new Error("unknown tree.json version " + doc.version);
        state.doc = doc;
        state.polls += 1;
        render(doc);
        setStatus("live", "live · " + new Date(doc.time * 1000).toLocaleTimeString());
      } catch (e) {
        state.errors += 1;
        setStatus("offline", "not reachable (" + e.message + "); retrying");
      }
    }
    setTimeout(poll, POLL_MS);
  }

  function setAll(open) {
    document.querySelectorAll(".node.sup").forEach((n) => {
      state.toggled.set(n.dataset.key, open);
      n.classList.toggle("collapsed", !open);
    });
  }
  $("expand").addEventListener("click", () => setAll(true));
  $("collapse").addEventListener("click", () => setAll(false));
  $("pause").addEventListener("change", (e) => { state.paused = e.target.checked; });
  poll();
})();
