/* batchflow docs site: reads the catalog inlined in the page (#bf-data), draws the lineage graph and
   the plots as SVG, and shows one node at a time, selected by the URL hash (#!/model/<name>) as dbt
   docs does. No libraries, no network. */
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("bf-data").textContent);
  var NODES = DATA.nodes;
  var TESTS = {};
  DATA.tests.forEach(function (t) { TESTS[t.name] = t; });
  var SVGNS = "http://www.w3.org/2000/svg";
  var COLORS = { ok: "#2f9e44", row_error: "#d6336c", missing: "#adb5bd", prompt_blocked: "#f08c00",
    candidate_blocked: "#e8590c", truncated: "#fab005", recitation: "#ae3ec9", safety: "#c2255c" };
  var PALETTE = ["#1f5fbf", "#2f9e44", "#e8590c", "#7b3fb5", "#f08c00", "#0c8599", "#d6336c", "#5c940d"];
  var state = { selected: null, query: "", column: null, sqlTab: "compiled" };

  // ---- small helpers ---------------------------------------------------------------------------------
  function esc(s) {
    return String(s == null ? "" : s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function el(tag, attrs, html) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (html != null) e.innerHTML = html;
    return e;
  }
  function svg(tag, attrs, text) {
    var e = document.createElementNS(SVGNS, tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text != null) e.textContent = text;
    return e;
  }
  function kindOf(n) {
    if (n.resource_type !== "model") return n.resource_type;
    return n.materialized === "batch" ? "batch" : n.materialized === "ephemeral" ? "ephemeral" : "model";
  }
  function hashFor(name) {
    if (TESTS[name] && !NODES[name]) return "#!/test/" + encodeURIComponent(name);
    var n = NODES[name];
    return "#!/" + n.resource_type + "/" + encodeURIComponent(n.label);
  }
  function link(name, text) {
    return '<a href="' + hashFor(name) + '">' + esc(text || (NODES[name] ? NODES[name].label : name)) + "</a>";
  }
  function fmt(n) { return n == null ? "–" : Number(n).toLocaleString("en-US"); }
  function money(n) { return n == null ? "no price" : "$" + Number(n).toFixed(n < 0.01 ? 6 : 4); }
  function when(iso) { return iso ? String(iso).replace("T", " ").slice(0, 19) : "–"; }
  function highlightSql(sql) {
    var out = "", re = /(--[^\n]*|\/\*[\s\S]*?\*\/)|('(?:\\.|[^'\\])*'|"(?:\\.|[^"\\])*")|\b(select|from|where|join|left|right|inner|outer|full|cross|on|using|group|by|order|having|limit|as|and|or|not|in|is|null|case|when|then|else|end|with|union|all|distinct|over|partition|unnest|cast|struct|array|exists|between|like|qualify|window|true|false|if|except|replace|interval)\b/gi;
    var last = 0, m;
    while ((m = re.exec(sql)) !== null) {
      out += esc(sql.slice(last, m.index));
      var cls = m[1] ? "cmt" : m[2] ? "str" : "kw";
      out += '<span class="' + cls + '">' + esc(m[0]) + "</span>";
      last = re.lastIndex;
    }
    return out + esc(sql.slice(last));
  }

  // ---- search ------------------------------------------------------------------------------------------
  function matches(name, q) {
    if (!q) return true;
    var n = NODES[name];
    var hay = [name, n.description, n.relation, n.path, (n.tags || []).join(" ")];
    n.columns.forEach(function (c) { hay.push(c.name, c.description); });
    return hay.join("\n").toLowerCase().indexOf(q) >= 0;
  }
  function testMatches(t, q) {
    return !q || [t.name, t.node, t.column, t.kind].join(" ").toLowerCase().indexOf(q) >= 0;
  }

  // ---- sidebar -----------------------------------------------------------------------------------------
  function renderSidebar() {
    var nav = document.getElementById("sidebar");
    nav.innerHTML = "";
    var groups = [["Sources", function (n) { return n.resource_type === "source"; }],
      ["Seeds", function (n) { return n.resource_type === "seed"; }],
      ["Batch models", function (n) { return n.resource_type === "model" && n.materialized === "batch"; }],
      ["Models", function (n) { return n.resource_type === "model" && n.materialized !== "batch"; }]];
    var names = Object.keys(NODES).sort(function (a, b) { return NODES[a].label.localeCompare(NODES[b].label); });
    groups.forEach(function (g) {
      var members = names.filter(function (n) { return g[1](NODES[n]); });
      if (!members.length) return;
      nav.appendChild(el("h4", {}, esc(g[0]) + ' <span class="count"></span>'));
      members.forEach(function (name) {
        var a = el("a", { "class": "nav-item", href: hashFor(name), "data-node": name, title: name },
          '<span class="dot ' + kindOf(NODES[name]) + '"></span>' + esc(NODES[name].label));
        nav.appendChild(a);
      });
    });
    if (DATA.tests.length) {
      nav.appendChild(el("h4", {}, "Tests"));
      DATA.tests.forEach(function (t) {
        nav.appendChild(el("a", { "class": "nav-item", href: hashFor(t.name), "data-test": t.name, title: t.name },
          '<span class="dot test"></span>' + esc(t.name)));
      });
    }
    nav.appendChild(el("div", { "class": "empty", id: "no-match", hidden: "" }, "nothing matches"));
  }
  function applySearch() {
    var q = state.query, shown = 0;
    document.querySelectorAll("#sidebar .nav-item").forEach(function (a) {
      var ok = a.dataset.node ? matches(a.dataset.node, q) : testMatches(TESTS[a.dataset.test], q);
      a.classList.toggle("hidden", !ok);
      if (ok) shown++;
      a.classList.toggle("active", (a.dataset.node || a.dataset.test) === state.selected);
    });
    document.getElementById("no-match").hidden = shown > 0;
    highlightGraph();
  }

  // ---- the lineage graph -------------------------------------------------------------------------------
  var BOX_W = 176, BOX_H = 36, GAP_X = 70, GAP_Y = 18, PAD = 12;
  var positions = {};
  function renderGraph() {
    var g = document.getElementById("graph");
    g.innerHTML = "";
    var layers = DATA.layout.layers, tallest = 0;
    layers.forEach(function (names, i) {
      tallest = Math.max(tallest, names.length);
      names.forEach(function (name, j) { positions[name] = { x: PAD + i * (BOX_W + GAP_X), y: 0, row: j, layer: i }; });
    });
    var height = PAD * 2 + tallest * BOX_H + (tallest - 1) * GAP_Y;
    layers.forEach(function (names) {  // centre each layer vertically
      var h = names.length * BOX_H + (names.length - 1) * GAP_Y, top = (height - h) / 2;
      names.forEach(function (name, j) { positions[name].y = top + j * (BOX_H + GAP_Y); });
    });
    var width = PAD * 2 + layers.length * BOX_W + Math.max(0, layers.length - 1) * GAP_X;
    g.setAttribute("viewBox", "0 0 " + width + " " + height);
    g.setAttribute("width", width);
    g.setAttribute("height", height);
    var edges = svg("g", { "class": "edges" });
    DATA.layout.edges.forEach(function (e) {
      var a = positions[e[0]], b = positions[e[1]];
      if (!a || !b) return;
      var x1 = a.x + BOX_W, y1 = a.y + BOX_H / 2, x2 = b.x, y2 = b.y + BOX_H / 2, mid = (x1 + x2) / 2;
      edges.appendChild(svg("path", { "class": "edge", "data-from": e[0], "data-to": e[1],
        d: "M" + x1 + "," + y1 + " C" + mid + "," + y1 + " " + mid + "," + y2 + " " + x2 + "," + y2 }));
    });
    g.appendChild(edges);
    Object.keys(positions).forEach(function (name) {
      var p = positions[name], n = NODES[name];
      var node = svg("g", { "class": "node " + kindOf(n), "data-node": name, transform: "translate(" + p.x + "," + p.y + ")" });
      node.appendChild(svg("title", {}, name + (n.description ? "\n" + n.description : "")));
      node.appendChild(svg("rect", { width: BOX_W, height: BOX_H, rx: 6 }));
      var label = n.label.length > 24 ? n.label.slice(0, 23) + "…" : n.label;
      node.appendChild(svg("text", { x: 10, y: 14 }, label));
      node.appendChild(svg("text", { x: 10, y: 27, "class": "kind" }, kindOf(n) === "model" ? n.materialized : kindOf(n)));
      node.addEventListener("click", function () { location.hash = hashFor(name); });
      g.appendChild(node);
    });
    // shrink a picture a little wider than the panel to fit it; a much wider one scrolls
    var room = document.getElementById("graph-wrap").clientWidth - 16;
    g.classList.toggle("fit", width > room && width < room * 1.6);
    var legend = document.getElementById("graph-legend");
    legend.innerHTML = ["source", "seed", "model", "batch"].map(function (k) {
      return '<span><i class="dot ' + k + '"></i>' + (k === "batch" ? "batch model" : k) + "</span>";
    }).join("") + '<span class="muted">' + Object.keys(positions).length + " nodes · click one to select it</span>";
  }
  function family(name) {
    var up = {}, down = {};
    (function walkUp(n) { (NODES[n] ? NODES[n].depends_on : []).forEach(function (d) { if (!up[d]) { up[d] = 1; walkUp(d); } }); })(name);
    (function walkDown(n) { (NODES[n] ? NODES[n].children : []).forEach(function (c) { if (!down[c]) { down[c] = 1; walkDown(c); } }); })(name);
    return { up: up, down: down };
  }
  function highlightGraph() {
    var sel = state.selected && NODES[state.selected] ? state.selected : (TESTS[state.selected] ? TESTS[state.selected].node : null);
    var fam = sel ? family(sel) : null, q = state.query;
    document.querySelectorAll("#graph .node").forEach(function (g) {
      var name = g.dataset.node, related = !fam || name === sel || fam.up[name] || fam.down[name];
      var hit = q && matches(name, q);
      g.classList.toggle("selected", name === sel);
      g.classList.toggle("match", !!hit);
      g.classList.toggle("dim", q ? !hit : !related);
    });
    document.querySelectorAll("#graph .edge").forEach(function (p) {
      var f = p.dataset.from, t = p.dataset.to;
      var lit = fam && ((f === sel || fam.up[f]) && (t === sel || fam.up[t]) || (f === sel || fam.down[f]) && (t === sel || fam.down[t]));
      p.classList.toggle("lit", !!lit);
      p.classList.toggle("dim", !!(q ? !(matches(f, q) && matches(t, q)) : fam && !lit));
    });
    if (sel && positions[sel]) {  // keep the selected node in view
      var wrap = document.getElementById("graph-wrap"), p = positions[sel];
      if (p.x < wrap.scrollLeft || p.x + BOX_W > wrap.scrollLeft + wrap.clientWidth) wrap.scrollLeft = Math.max(0, p.x - 40);
    }
  }

  // ---- column lineage ------------------------------------------------------------------------------------
  var DOWNSTREAM = {};  // "node\u0000column" -> [{node, column}]
  Object.keys(NODES).forEach(function (name) {
    NODES[name].columns.forEach(function (c) {
      (c.upstream || []).forEach(function (u) {
        var k = u.node + "\u0000" + u.column;
        (DOWNSTREAM[k] = DOWNSTREAM[k] || []).push({ node: name, column: c.name });
      });
    });
  });
  function columnOf(node, column) {
    var n = NODES[node];
    return n ? n.columns.filter(function (c) { return c.name === column; })[0] : null;
  }
  function colLink(ref) {
    return '<a href="' + hashFor(ref.node) + '" data-col="' + esc(ref.column) + '">' + esc(NODES[ref.node].label) +
      "." + esc(ref.column) + "</a>";
  }
  function upstreamTree(ref, seen) {
    var c = columnOf(ref.node, ref.column);
    if (!c || !c.upstream || !c.upstream.length) return "";
    return "<ul>" + c.upstream.map(function (u) {
      var k = u.node + "." + u.column;
      if (seen[k]) return "<li>" + colLink(u) + " …</li>";
      seen[k] = 1;
      return "<li>" + colLink(u) + upstreamTree(u, seen) + "</li>";
    }).join("") + "</ul>";
  }
  function downstreamTree(ref, seen) {
    var kids = DOWNSTREAM[ref.node + "\u0000" + ref.column] || [];
    if (!kids.length) return "";
    return "<ul>" + kids.map(function (d) {
      var k = d.node + "." + d.column;
      if (seen[k]) return "<li>" + colLink(d) + " …</li>";
      seen[k] = 1;
      return "<li>" + colLink(d) + downstreamTree(d, seen) + "</li>";
    }).join("") + "</ul>";
  }
  function columnLineage(name, column) {
    var ref = { node: name, column: column }, c = columnOf(name, column);
    var up = upstreamTree(ref, {}), down = downstreamTree(ref, {});
    var why = c && c.lineage_error ? '<div class="err">not traced: ' + esc(c.lineage_error) + "</div>" : "";
    var none = c && c.upstream && !c.upstream.length ? '<div class="muted">computed from no column (a literal, COUNT(*), …)</div>' : "";
    return '<div class="col-lineage" id="column-lineage"><b>Column lineage of ' + esc(NODES[name].label) + "." + esc(column) +
      "</b> <span class=\"muted\">(sqlglot)</span>" + why +
      "<div><b class=\"muted\">comes from</b>" + (up || (none || '<div class="muted">– (a column of this node itself)</div>')) + "</div>" +
      "<div><b class=\"muted\">used by</b>" + (down || '<div class="muted">– no model reads it</div>') + "</div></div>";
  }

  // ---- plots (SVG) ------------------------------------------------------------------------------------------
  function niceMax(v) {
    if (!(v > 0)) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(v))), f = v / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
  }
  function axisLabel(v, isMoney) {
    if (isMoney) return "$" + (v >= 1 ? v.toFixed(2) : v.toPrecision(2));
    return v >= 1e6 ? (v / 1e6) + "M" : v >= 1e3 ? (v / 1e3) + "k" : String(Math.round(v * 100) / 100);
  }
  function frame(s, W, H, L, B, max, isMoney) {
    for (var i = 0; i <= 4; i++) {
      var y = H - B - (H - B - 10) * i / 4;
      s.appendChild(svg("line", { "class": "grid", x1: L, x2: W - 6, y1: y, y2: y }));
      s.appendChild(svg("text", { x: L - 4, y: y + 3, "text-anchor": "end" }, axisLabel(max * i / 4, isMoney)));
    }
    s.appendChild(svg("line", { "class": "axis", x1: L, x2: W - 6, y1: H - B, y2: H - B }));
    s.appendChild(svg("line", { "class": "axis", x1: L, x2: L, y1: 10, y2: H - B }));
  }
  function legendHtml(series) {
    return '<div class="legend">' + series.map(function (s) {
      return '<span><i style="background:' + s.color + '"></i>' + esc(s.name) + "</span>";
    }).join("") + "</div>";
  }
  /* Stacked bars: one bar per category, one segment per series. */
  function barChart(id, title, categories, series, opts) {
    opts = opts || {};
    var W = 440, H = 200, L = 46, B = 34, s = svg("svg", { viewBox: "0 0 " + W + " " + H, "data-plot": id, role: "img" });
    s.appendChild(svg("title", {}, title));
    var totals = categories.map(function (_, i) { return series.reduce(function (a, se) { return a + (se.values[i] || 0); }, 0); });
    var max = niceMax(Math.max.apply(null, totals.concat([0])));
    frame(s, W, H, L, B, max, opts.money);
    var slot = (W - L - 12) / Math.max(1, categories.length), bw = Math.min(46, slot * 0.6);
    categories.forEach(function (cat, i) {
      var x = L + 6 + slot * i + (slot - bw) / 2, y = H - B;
      series.forEach(function (se) {
        var v = se.values[i] || 0, h = (H - B - 10) * v / max;
        if (v <= 0) return;
        var r = svg("rect", { x: x, y: y - h, width: bw, height: h, fill: se.color, "class": "bar" });
        r.appendChild(svg("title", {}, cat + " · " + se.name + ": " + (opts.money ? money(v) : fmt(v))));
        s.appendChild(r);
        y -= h;
      });
      s.appendChild(svg("text", { x: x + bw / 2, y: H - B + 13, "text-anchor": "middle" }, cat));
    });
    if (opts.xLabel) s.appendChild(svg("text", { x: (W + L) / 2, y: H - 4, "text-anchor": "middle" }, opts.xLabel));
    return plotBox(id, title, s, series);
  }
  /* Lines over time: x from ISO timestamps (a lone point sits in the middle). */
  function lineChart(id, title, times, series, opts) {
    opts = opts || {};
    var W = 440, H = 200, L = 52, B = 34, s = svg("svg", { viewBox: "0 0 " + W + " " + H, "data-plot": id, role: "img" });
    s.appendChild(svg("title", {}, title));
    var xs = times.map(function (t) { return new Date(t).getTime(); });
    var lo = Math.min.apply(null, xs), hi = Math.max.apply(null, xs);
    var max = niceMax(Math.max.apply(null, [0].concat.apply([], series.map(function (se) { return se.values.filter(function (v) { return v != null; }); }))));
    frame(s, W, H, L, B, max, opts.money);
    function X(t) { return hi === lo ? (L + W - 6) / 2 : L + 10 + (W - L - 26) * (t - lo) / (hi - lo); }
    function Y(v) { return H - B - (H - B - 10) * v / max; }
    series.forEach(function (se) {
      var pts = [];
      xs.forEach(function (t, i) { if (se.values[i] != null) pts.push([X(t), Y(se.values[i]), i]); });
      if (pts.length > 1) s.appendChild(svg("polyline", { fill: "none", stroke: se.color, "stroke-width": 2,
        points: pts.map(function (p) { return p[0] + "," + p[1]; }).join(" ") }));
      pts.forEach(function (p) {
        var c = svg("circle", { cx: p[0], cy: p[1], r: 3.5, fill: se.color, "class": "point" });
        c.appendChild(svg("title", {}, when(times[p[2]]) + " · " + se.name + ": " + (opts.money ? money(se.values[p[2]]) : fmt(se.values[p[2]]))));
        s.appendChild(c);
      });
    });
    // tick labels: month-day hour:minute, with seconds when the runs are less than an hour apart
    var ticks = hi === lo ? [lo] : [lo, (lo + hi) / 2, hi], span = hi - lo;
    ticks.forEach(function (t, i) {
      var text = when(new Date(t).toISOString()).slice(span && span < 3600e3 ? 11 : 5, span && span < 3600e3 ? 19 : 16);
      var anchor = ticks.length === 1 ? "middle" : i === 0 ? "start" : i === ticks.length - 1 ? "end" : "middle";
      s.appendChild(svg("text", { x: X(t) + (anchor === "start" ? -6 : anchor === "end" ? 6 : 0), y: H - B + 13, "text-anchor": anchor }, text));
    });
    s.appendChild(svg("text", { x: (W + L) / 2, y: H - 4, "text-anchor": "middle" }, "run started (UTC)"));
    return plotBox(id, title, s, series);
  }
  function plotBox(id, title, s, series) {
    var box = el("div", { "class": "plot", id: "plot-" + id }, "<h4>" + esc(title) + "</h4>");
    box.appendChild(s);
    box.insertAdjacentHTML("beforeend", legendHtml(series));
    return box;
  }

  // ---- batch history ----------------------------------------------------------------------------------------
  function batchSection(n) {
    var b = n.batch, wrap = el("div", { id: "batch-history" });
    wrap.appendChild(el("h3", {}, "Batch history"));
    if (!b) {
      wrap.appendChild(el("p", { "class": "muted" }, DATA.metadata.warehouse ? "No history." :
        "Generated without the warehouse (--empty-catalog): no history."));
      return wrap;
    }
    var runs = b.runs, totalCost = runs.reduce(function (a, r) { return a == null || r.cost == null ? null : a + r.cost; }, 0);
    var outcomeNow = b.outcomes || {}, rowsNow = Object.keys(outcomeNow).reduce(function (a, k) { return a + outcomeNow[k]; }, 0);
    var stats = [["runs", fmt(runs.length)], ["jobs", fmt(b.jobs.length)],
      ["rows sent", fmt(runs.reduce(function (a, r) { return a + r.sent; }, 0))],
      ["tokens", fmt(runs.reduce(function (a, r) { return a + r.total_tokens; }, 0))],
      ["cost", money(totalCost)], ["rows now", fmt(rowsNow)],
      ["answered ok", rowsNow ? Math.round(100 * (outcomeNow.ok || 0) / rowsNow) + "%" : "–"]];
    wrap.appendChild(el("div", { "class": "stats" }, stats.map(function (s) { return '<div class="stat"><b>' + s[1] + "</b><span>" + s[0] + "</span></div>"; }).join("")));
    if (!runs.length) {
      wrap.appendChild(el("p", { "class": "muted", id: "no-runs" }, "No jobs in the ledger yet: `batchflow run` submits them."));
      return wrap;
    }
    wrap.appendChild(el("p", { "class": "note" }, "Per run: rows sent, successful and failed as the ledger counts the run's jobs; " +
      "reused = answers landed by an earlier run and kept (not paid again); outcomes, tokens and cost are those of the answers " +
      "a run landed that are still the stored answer."));
    var labels = runs.map(function (r, i) { return "run " + (i + 1); });
    var plots = el("div", { "class": "plots" });
    plots.appendChild(barChart("rows", "Rows per run", labels, [
      { name: "successful", color: "#2f9e44", values: runs.map(function (r) { return r.successful; }) },
      { name: "failed", color: "#d6336c", values: runs.map(function (r) { return r.failed; }) },
      { name: "missing", color: "#adb5bd", values: runs.map(function (r) { return r.missing; }) },
      { name: "sent, not counted yet", color: "#ffd43b", values: runs.map(function (r) { return Math.max(0, r.sent - r.successful - r.failed - r.missing); }) },
      { name: "reused", color: "#74c0fc", values: runs.map(function (r) { return r.reused; }) }]));
    var outcomes = {};
    runs.forEach(function (r) { Object.keys(r.outcomes).forEach(function (k) { outcomes[k] = 1; }); });
    Object.keys(outcomeNow).forEach(function (k) { outcomes[k] = 1; });
    var okeys = Object.keys(outcomes).sort(function (a, b) { return a === "ok" ? -1 : b === "ok" ? 1 : a.localeCompare(b); });
    plots.appendChild(barChart("outcomes", "Outcome mix (per run, and the model's rows now)", labels.concat(["now"]),
      okeys.map(function (k, i) {
        return { name: k, color: COLORS[k] || PALETTE[i % PALETTE.length],
          values: runs.map(function (r) { return r.outcomes[k] || 0; }).concat([outcomeNow[k] || 0]) };
      })));
    var times = runs.map(function (r) { return r.started_at; });
    plots.appendChild(lineChart("tokens", "Tokens over time", times, [
      { name: "prompt", color: "#1f5fbf", values: runs.map(function (r) { return r.prompt_tokens; }) },
      { name: "output", color: "#e8590c", values: runs.map(function (r) { return r.output_tokens; }) },
      { name: "total", color: "#7b3fb5", values: runs.map(function (r) { return r.total_tokens; }) }]));
    var cum = 0;
    plots.appendChild(lineChart("cost", "Cost over time (USD)", times, [
      { name: "per run", color: "#2f9e44", values: runs.map(function (r) { return r.cost; }) },
      { name: "cumulative", color: "#1d2330", values: runs.map(function (r) { if (cum == null || r.cost == null) { cum = null; return null; } cum += r.cost; return cum; }) }],
      { money: true }));
    wrap.appendChild(plots);
    var rows = runs.map(function (r, i) {
      return "<tr><td>" + labels[i] + "</td><td><code>" + esc(r.run_id) + "</code></td><td>" + when(r.started_at) + "</td><td>" + r.jobs +
        "</td><td>" + esc(Object.keys(r.states).map(function (k) { return k + " " + r.states[k]; }).join(", ")) + "</td><td>" + fmt(r.sent) +
        "</td><td>" + fmt(r.reused) + "</td><td>" + fmt(r.failed) + "</td><td>" + fmt(r.total_tokens) + "</td><td>" + money(r.cost) + "</td></tr>";
    }).join("");
    wrap.appendChild(el("h3", {}, "Runs"));
    wrap.appendChild(el("table", { id: "runs-table" }, "<thead><tr><th>#</th><th>run id</th><th>started</th><th>jobs</th><th>states</th>" +
      "<th>sent</th><th>reused</th><th>failed</th><th>tokens</th><th>cost</th></tr></thead><tbody>" + rows + "</tbody>"));
    wrap.appendChild(el("h3", {}, "Jobs"));
    wrap.appendChild(el("table", { id: "jobs-table" }, "<thead><tr><th>job</th><th>shard</th><th>state</th><th>model</th><th>rows</th>" +
      "<th>ok</th><th>failed</th><th>missing</th><th>created</th><th>backend name</th></tr></thead><tbody>" +
      b.jobs.map(function (j) {
        return "<tr><td><code>" + esc(j.job_key) + "</code></td><td>" + j.shard + "</td><td>" + esc(j.state) +
          (j.job_state && j.job_state !== j.state ? ' <span class="muted">(' + esc(j.job_state) + ")</span>" : "") +
          "</td><td>" + esc(j.gemini_model) + "</td><td>" + fmt(j.row_count) + "</td><td>" + fmt(j.successful_count) + "</td><td>" +
          fmt(j.failed_count) + "</td><td>" + fmt(j.missing_count) + "</td><td>" + when(j.created_at) + "</td><td class=\"muted wrap\">" +
          esc(j.job_name || "(not created)") + (j.error ? '<div class="err">' + esc(j.error) + "</div>" : "") + "</td></tr>";
      }).join("") + "</tbody>"));
    return wrap;
  }

  // ---- detail panes -------------------------------------------------------------------------------------------
  function badges(n) {
    var out = ['<span class="badge">' + esc(n.resource_type) + "</span>"];
    if (n.resource_type === "model") out.push('<span class="badge' + (n.materialized === "batch" ? " batch" : "") + '">' + esc(n.materialized) + "</span>");
    if (DATA.metadata.warehouse && n.materialized !== "ephemeral" && n.resource_type !== "source")
      out.push(n.built ? '<span class="badge built">built (' + esc(n.built) + ")</span>" : '<span class="badge unbuilt">not built</span>');
    (n.tags || []).forEach(function (t) { out.push('<span class="badge">tag: ' + esc(t) + "</span>"); });
    return '<div class="badges">' + out.join("") + "</div>";
  }
  function columnsTable(n) {
    if (!n.columns.length) return '<p class="muted">No columns known' + (n.lineage_error ? ": " + esc(n.lineage_error) : "") + ".</p>";
    var rows = n.columns.map(function (c) {
      var from = c.added_by ? '<span class="muted">added by ' + esc(c.added_by) + "</span>"
        : c.upstream == null ? (c.lineage_error ? '<span class="err" title="' + esc(c.lineage_error) + '">not traced</span>' : "")
        : c.upstream.length ? c.upstream.map(colLink).join("") : '<span class="muted">computed</span>';
      return '<tr class="col-row' + (state.column === c.name ? " selected" : "") + '" data-column="' + esc(c.name) + '"><td><b>' + esc(c.name) +
        "</b></td><td><code>" + esc(c.type) + "</code></td><td>" + esc(c.description) + "</td><td>" + esc(c.tests.join(", ")) +
        '</td><td class="lineage-cell">' + from + "</td></tr>";
    }).join("");
    return '<table class="columns" id="columns-table"><thead><tr><th>column</th><th>type</th><th>description</th><th>tests</th>' +
      "<th>comes from</th></tr></thead><tbody>" + rows + "</tbody></table>";
  }
  function sqlBlock(n) {
    var has = { compiled: !!n.compiled_sql, source: !!n.raw_sql };
    if (!has.compiled && !has.source) return "";
    var tab = has[state.sqlTab] ? state.sqlTab : has.compiled ? "compiled" : "source";
    var text = tab === "compiled" ? n.compiled_sql : n.raw_sql;
    return "<h3>SQL</h3><div class=\"tabs\">" + ["compiled", "source"].filter(function (t) { return has[t]; }).map(function (t) {
      return '<button data-tab="' + t + '" class="' + (t === tab ? "on" : "") + '">' + t + "</button>";
    }).join("") + '</div><pre class="sql" id="sql"><code>' + highlightSql(text.trim()) + "</code></pre>";
  }
  function renderNode(name) {
    var n = NODES[name], d = document.getElementById("detail");
    var html = "<h2>" + esc(n.label) + "</h2>" + badges(n) +
      '<div class="meta">relation <code>' + esc(n.relation) + "</code>" + (n.path ? " · file <code>" + esc(n.path) + "</code>" : "") + "</div>";
    var cfg = Object.keys(n.config).filter(function (k) { return k !== "materialized" && k !== "tags"; });
    if (cfg.length) html += '<div class="meta">' + cfg.map(function (k) { return esc(k) + " <code>" + esc(JSON.stringify(n.config[k])) + "</code>"; }).join(" · ") + "</div>";
    if (n.compile_error) html += '<div class="err" id="compile-error">did not compile: ' + esc(n.compile_error) + "</div>";
    html += '<div class="description">' + (n.description ? esc(n.description) : '<span class="muted">No description.</span>') + "</div>";
    html += '<div class="links"><b class="muted">depends on</b> ' + (n.depends_on.map(function (x) { return link(x); }).join("") || '<span class="muted">–</span>') +
      ' &nbsp; <b class="muted">referenced by</b> ' + (n.children.map(function (x) { return link(x); }).join("") || '<span class="muted">–</span>') + "</div>";
    html += "<h3>Columns</h3>" + columnsTable(n) + (state.column && columnOf(name, state.column) ? columnLineage(name, state.column) : "");
    if (n.tests.length) html += "<h3>Tests</h3><div class=\"links\">" + n.tests.map(function (t) { return link(t, t); }).join("") + "</div>";
    d.innerHTML = html;
    if (n.materialized === "batch") d.appendChild(batchSection(n));
    d.insertAdjacentHTML("beforeend", sqlBlock(n));
    d.querySelectorAll("tr.col-row").forEach(function (tr) {
      tr.addEventListener("click", function (ev) {
        if (ev.target.closest("a")) return;
        state.column = state.column === tr.dataset.column ? null : tr.dataset.column;
        renderNode(name);
      });
    });
    d.querySelectorAll(".tabs button").forEach(function (b) {
      b.addEventListener("click", function () { state.sqlTab = b.dataset.tab; renderNode(name); });
    });
  }
  function renderTest(name) {
    var t = TESTS[name], d = document.getElementById("detail");
    d.innerHTML = "<h2>" + esc(t.name) + '</h2><div class="badges"><span class="badge">test</span><span class="badge">' + esc(t.kind) + "</span></div>" +
      '<div class="meta">on ' + link(t.node) + " column <code>" + esc(t.column) + "</code> · declared for <code>" + esc(t.path) + "</code></div>" +
      (Object.keys(t.args || {}).length ? '<div class="meta">arguments <code>' + esc(JSON.stringify(t.args)) + "</code></div>" : "") +
      '<h3>SQL</h3><p class="note">It passes when this query counts no failing rows.</p><pre class="sql" id="sql"><code>' + highlightSql(t.sql) + "</code></pre>";
  }
  function renderOverview() {
    var d = document.getElementById("detail"), names = Object.keys(NODES), count = function (f) { return names.filter(function (n) { return f(NODES[n]); }).length; };
    var batch = names.filter(function (n) { return NODES[n].materialized === "batch"; });
    d.innerHTML = "<h2>" + esc(DATA.metadata.project) + "</h2>" +
      '<div class="meta">target <code>' + esc(DATA.metadata.target) + "</code> (" + esc(DATA.metadata.target_type) + ") · generated " + when(DATA.metadata.generated_at) +
      " · batchflow " + esc(DATA.metadata.batchflow_version) + "</div>" +
      '<div class="stats">' + [["models", count(function (n) { return n.resource_type === "model"; })], ["batch models", batch.length],
        ["sources", count(function (n) { return n.resource_type === "source"; })], ["seeds", count(function (n) { return n.resource_type === "seed"; })],
        ["tests", DATA.tests.length]].map(function (s) { return '<div class="stat"><b>' + s[1] + "</b><span>" + s[0] + "</span></div>"; }).join("") + "</div>" +
      "<h3>Batch models</h3>" + (batch.length ? "<table><thead><tr><th>model</th><th>runs</th><th>jobs</th><th>tokens</th><th>cost</th></tr></thead><tbody>" +
        batch.map(function (n) {
          var b = NODES[n].batch, runs = b ? b.runs : [];
          return "<tr><td>" + link(n) + "</td><td>" + runs.length + "</td><td>" + (b ? b.jobs.length : "–") + "</td><td>" +
            fmt(runs.reduce(function (a, r) { return a + r.total_tokens; }, 0)) + "</td><td>" +
            money(runs.reduce(function (a, r) { return a == null || r.cost == null ? null : a + r.cost; }, 0)) + "</td></tr>";
        }).join("") + "</tbody></table>" : '<p class="muted">none</p>') +
      '<p class="note">Select a node in the graph or the list; the search box filters both. Click a column to follow its lineage.</p>';
  }

  // ---- routing ---------------------------------------------------------------------------------------------------
  function fromHash() {
    var m = /^#!\/(model|source|seed|test)\/([^?]+)/.exec(location.hash), name = null;
    if (m) {
      var label = decodeURIComponent(m[2]);
      if (m[1] === "test") name = TESTS[label] ? label : null;
      else if (m[1] === "source") name = NODES["source:" + label] ? "source:" + label : null;
      else name = NODES[label] && NODES[label].resource_type === m[1] ? label : null;
    }
    if (name !== state.selected) state.column = null;
    state.selected = name;
    var col = /[?&]column=([^&]+)/.exec(location.hash);
    if (col && name && NODES[name]) state.column = decodeURIComponent(col[1]);
    if (!name) renderOverview(); else if (NODES[name]) renderNode(name); else renderTest(name);
    applySearch();
  }

  function start() {
    var md = DATA.metadata;
    document.getElementById("project-info").textContent = md.project + " · target " + md.target + " (" + md.target_type + ")";
    renderSidebar();
    renderGraph();
    var box = document.getElementById("search");
    box.addEventListener("input", function () { state.query = box.value.trim().toLowerCase(); applySearch(); });
    document.addEventListener("click", function (ev) {  // a column link selects that column on its node
      var a = ev.target.closest && ev.target.closest("a[data-col]");
      if (!a) return;
      ev.preventDefault();
      location.hash = a.getAttribute("href").split("?")[0] + "?column=" + encodeURIComponent(a.dataset.col);
    });
    window.addEventListener("hashchange", fromHash);
    fromHash();
  }
  start();
})();
