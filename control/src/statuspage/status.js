// Padis status page: fetches /v1/state and /metrics from the admin API every few seconds (same origin, same
// credentials as the page) and renders them; rates are the difference of two samples over the time between them.
"use strict";

const PERIOD_MS = 3000;
let previous = null; // { t: ms, metrics: Map(series key -> value) }

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// A cell: a string or number, or { text, cls, num }.
function table(headers, rows, numeric) {
  const num = new Set(numeric || []);
  const head = el("tr", {}, ...headers.map((h, i) => el("th", num.has(i) ? { class: "num" } : {}, h)));
  const body = rows.map(r => el("tr", {}, ...r.map((c, i) => {
    const cell = (c !== null && typeof c === "object" && !(c instanceof Node)) ? c : { text: c };
    const cls = [num.has(i) ? "num" : "", cell.cls || ""].join(" ").trim();
    return el("td", cls ? { class: cls } : {}, cell.text === undefined || cell.text === null ? "" : cell.text);
  })));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
}

function fill(id, ...nodes) {
  const body = document.querySelector("#" + id + " .body");
  body.replaceChildren(...nodes);
}

function line(text, cls) { return el("p", cls ? { class: cls } : {}, text); }

// Prometheus text format -> [{ name, labels, value }].
function parseMetrics(text) {
  const out = [];
  for (const raw of text.split("\n")) {
    const l = raw.trim();
    if (!l || l.startsWith("#")) continue;
    const m = l.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    let lm;
    while ((lm = re.exec(m[3] || "")) !== null) labels[lm[1]] = lm[2].replace(/\\(.)/g, "$1");
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}

// Sum of `name` series matching `match` (labels), now and per second since the previous sample.
function sum(series, name, match) {
  let v = 0;
  for (const s of series) {
    if (s.name !== name) continue;
    const miss = ([k, want]) => typeof want === "function" ? !want(s.labels[k]) : s.labels[k] !== want;
    if (Object.entries(match || {}).some(miss)) continue;
    v += s.value;
  }
  return v;
}

function rate(series, prevSeries, dt, name, match) {
  if (!prevSeries || dt <= 0) return null;
  const d = sum(series, name, match) - sum(prevSeries, name, match);
  return d < 0 ? null : d / dt; // a counter reset (restart): no rate this round
}

function fmtRate(r) {
  if (r === null) return { text: "…", cls: "muted" };
  if (r >= 1e6) return (r / 1e6).toFixed(2) + "M/s";
  if (r >= 1e3) return (r / 1e3).toFixed(1) + "k/s";
  return r.toFixed(r < 10 ? 2 : 1) + "/s";
}

function fmtBits(r) {
  if (r === null) return { text: "…", cls: "muted" };
  const b = r * 8;
  if (b >= 1e9) return (b / 1e9).toFixed(2) + " Gbit/s";
  if (b >= 1e6) return (b / 1e6).toFixed(2) + " Mbit/s";
  if (b >= 1e3) return (b / 1e3).toFixed(1) + " kbit/s";
  return b.toFixed(0) + " bit/s";
}

function fmtAge(ms) {
  if (ms === null || ms === undefined) return "never";
  const s = ms / 1000;
  if (s < 120) return s.toFixed(1) + "s ago";
  if (s < 7200) return (s / 60).toFixed(0) + "m ago";
  return (s / 3600).toFixed(1) + "h ago";
}

function fmtDuration(secs) {
  if (secs === null || secs === undefined) return "";
  const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24, m = Math.floor(secs / 60) % 60;
  if (d) return d + "d" + h + "h";
  if (h) return h + "h" + m + "m";
  if (m) return m + "m" + (secs % 60) + "s";
  return secs + "s";
}

function word(text, cls) { return { text, cls }; }

function healthOf(state, group, addr) {
  return ((state.planes || {}).health || []).find(x => x.group === group && x.backend === addr);
}

function render(state, series, prevSeries, dt) {
  const st = state.snapshot.state || {};
  const planes = state.planes || {};
  document.getElementById("version").textContent = "version " + state.version;
  document.getElementById("generation").textContent = "generation " + state.generation;
  const reload = state.last_reload || {};
  const reloadEl = document.getElementById("reload");
  const reloadErrors = document.getElementById("reload-errors");
  const when = reload.at_unix ? fmtAge(Date.now() - reload.at_unix * 1000) : "";
  if (reload.ok === false) {
    reloadEl.textContent = "last reload FAILED " + when;
    reloadErrors.replaceChildren(el("b", {}, "Last reload failed; the running config is kept:"),
      ...(reload.errors || []).map(e => el("div", {}, e)));
  } else {
    reloadEl.textContent = "last reload ok " + when;
    reloadErrors.replaceChildren();
  }
  if ((reload.restart_required || []).length) {
    reloadErrors.append(el("div", {}, "Restart required for: " + reload.restart_required.join(", ")));
  }

  // Listeners.
  fill("listeners", (st.listener || []).length ? table(["Listener", "Bind", "Protocol", "Open connections"],
    (st.listener || []).map(l => [l.name, l.bind, l.mode === "tcp" ? "tcp" : (l.tls ? "https" : "http"),
      sum(series, "padis_active_connections", { listener: l.name }) +
        sum(series, "padis_tcp_active_connections", { listener: l.name })]), [3]) : line("No listeners.", "muted"));

  const binds = Object.entries(((planes.l7 || {}).bind_failures) || {});
  if (binds.length) {
    document.querySelector("#listeners .body").append(...binds.map(([name, e]) =>
      line("Listener " + name + " is not bound: " + e + " (retried with each new state)", "bad")));
  }

  // Routes with request rates and error ratios (5xx among answers, over the last interval).
  const routes = st.route || [];
  fill("routes", routes.length ? table(["Route", "Host", "Path", "Groups", "Requests", "5xx ratio"],
    routes.map(r => {
      const total = rate(series, prevSeries, dt, "padis_http_requests_total", { route: r.name });
      const errors = rate(series, prevSeries, dt, "padis_http_requests_total",
        { route: r.name, code: c => /^5/.test(c || "") });
      let ratio = { text: "…", cls: "muted" };
      if (total !== null && errors !== null) {
        const x = total > 0 ? errors / total : 0;
        ratio = word((100 * x).toFixed(x > 0 && x < 0.01 ? 2 : 1) + "%", x >= 0.05 ? "bad" : x > 0 ? "warn" : "ok");
      }
      const groups = r.split ? r.split.map(w => w.group + " (" + w.weight + ")").join(", ") : (r.group || "");
      return [r.name, r.host || "*", r.path || "", groups, fmtRate(total), ratio];
    }), [4, 5]) : line("No routes.", "muted"));

  // Backend groups: health and weights.
  const rows = [];
  for (const g of st.group || []) {
    for (const b of g.backend || []) {
      const h = healthOf(state, g.name, b.addr);
      let hw;
      if (b.draining || b.weight === 0) hw = word("draining", "warn");
      else if (!h) hw = word("unchecked", "muted");
      else if (h.usable) hw = word("up", "ok");
      else if (h.up) hw = word("ejected", "warn");
      else hw = word("down" + (h.last_check_error ? " (" + h.last_check_error + ")" : ""), "bad");
      rows.push([g.name, g.balance || "", b.addr, b.weight, hw]);
    }
  }
  fill("groups", rows.length ? table(["Group", "Balance", "Backend", "Weight", "Health"], rows, [3])
    : line("No backend groups.", "muted"));

  // L4 VIPs: packet rates, Maglev table, connection-table activity.
  const l4 = planes.l4;
  if (!l4 || l4.enabled === false) {
    fill("l4", line("disabled (no [l4] interfaces)", "muted"));
  } else if (l4.state) {
    fill("l4", line(l4.state, "warn"));
  } else {
    const vipRate = (v, what) => rate(series, prevSeries, dt, "padis_l4_vip_" + what + "_total", { vip: v.name });
    const ev = e => rate(series, prevSeries, dt, "padis_l4_packets_total", { event: e });
    const ifaces = (l4.interfaces || []).map(i => i[0] + " (" + i[1] + ")").join(", ") || "not attached";
    fill("l4",
      line("Interfaces: " + ifaces + "; programmed generation " + l4.generation +
        (l4.last_error ? "; LAST ERROR: " + l4.last_error : ""), l4.last_error ? "bad" : ""),
      table(["VIP", "Address", "Backends in table", "Maglev table", "Packets", "Throughput"],
        (l4.vips || []).map(v => {
          const bs = v.backends || [];
          const inTable = bs.filter(b => b.in_table).length;
          return [v.name, v.vip, word(inTable + " / " + bs.length, inTable ? "ok" : "bad"), v.table_size,
            fmtRate(vipRate(v, "packets")), fmtBits(vipRate(v, "bytes"))];
        }), [2, 3, 4, 5]),
      el("h3", {}, "Connection table"),
      table(["Lookups hit", "Lookups missed (new flows)", "New flows not remembered (insert budget spent)"],
        [[fmtRate(ev("ct_hit")), fmtRate(ev("ct_miss")), fmtRate(ev("ct_insert_skipped"))]], [0, 1, 2]));
  }

  // DNS zones: serials and query rates.
  const dns = planes.dns;
  if (!dns || (!(dns.zones || []).length && !(dns.listen || []).length)) {
    fill("dns", line("disabled (no [dns] zones)", "muted"));
  } else {
    fill("dns", line("Listening on " + (dns.listen || []).join(", ")),
      table(["Zone", "State", "Serial", "Records", "Queries", "Problem"], (dns.zones || []).map(z => [
        z.name, word(z.state, z.state === "ok" ? "ok" : z.state === "stale" ? "warn" : "bad"), z.serial, z.records,
        fmtRate(rate(series, prevSeries, dt, "padis_dns_queries_total", { zone: z.name })),
        { text: [z.error, z.serial_note].filter(Boolean).join("; "), cls: "wrap" },
      ]), [2, 3, 4]),
      ...(dns.errors || []).map(e => line(e, "bad")));
  }

  // BGP and BFD sessions.
  const routing = planes.routing;
  if (!routing) {
    fill("routing", line("disabled (no [bgp] or [ospf])", "muted"));
  } else if (routing.state) {
    fill("routing", line(routing.state, "warn"));
  } else {
    const nodes = [];
    const peers = routing.peers || [];
    nodes.push(peers.length ? table(["Peer", "AS", "Session", "Up for", "Routes", "BFD", "Flaps", "Last error"],
      peers.map(p => [p.address, p.asn, word(p.state + (p.draining ? " (draining)" : ""),
        p.state === "established" ? (p.draining ? "warn" : "ok") : "bad"), fmtDuration(p.uptime_secs),
        p.routes_announced, p.bfd ? word(p.bfd.state + " (router " + p.bfd.remote_state + ")",
          p.bfd.state === "up" ? "ok" : "bad") : "", p.flaps, { text: p.last_error || "", cls: "wrap" }]), [4, 6])
      : line("BGP: no peers configured.", "muted"));
    if (routing.ospf) {
      nodes.push(line("OSPF: " + routing.ospf.routes_installed + " kernel routes installed" +
        (routing.ospf.last_error ? "; LAST ERROR: " + routing.ospf.last_error : ""),
        routing.ospf.last_error ? "bad" : ""));
    }
    fill("routing", ...nodes);
  }

  // Sources: staleness and rejected items.
  const srcRows = (state.snapshot.sources || []).map(s => {
    const d = (state.sources || {})[s.name] || {};
    const rejected = (d.rejected || []).length;
    const health = s.ok ? (rejected || (d.problems || []).length ? word("degraded", "warn") : word("ok", "ok"))
      : word("failing", "bad");
    return [s.name, health, fmtAge(s.last_ok_unix_ms ? Date.now() - s.last_ok_unix_ms : null), rejected,
      { text: s.last_error || "", cls: "wrap" }];
  });
  const rejectedRows = [];
  for (const [name, d] of Object.entries(state.sources || {})) {
    for (const r of d.rejected || []) {
      rejectedRows.push([name, r.kind, r.name, r.reason, { text: r.message, cls: "wrap" }]);
    }
  }
  fill("sources", table(["Source", "State", "Last good read", "Rejected items", "Error"], srcRows, [3]),
    ...(rejectedRows.length ? [el("h3", {}, "Rejected items"),
      table(["Source", "Kind", "Name", "Reason", "Why"], rejectedRows)] : []));
}

async function refresh() {
  const errorEl = document.getElementById("error");
  try {
    const opts = { credentials: "same-origin", cache: "no-store" };
    // From the origin: a page opened with credentials in its URL (user:token@host) would give relative URLs with
    // credentials, which fetch refuses; the browser sends the cached Basic credentials itself.
    const base = window.location.origin;
    const [sr, mr] = await Promise.all([fetch(base + "/v1/state", opts), fetch(base + "/metrics", opts)]);
    if (!sr.ok || !mr.ok) throw new Error("admin API answered " + (sr.ok ? mr.status : sr.status));
    const state = await sr.json();
    const series = parseMetrics(await mr.text());
    const now = Date.now();
    const prevSeries = previous ? previous.series : null;
    const dt = previous ? (now - previous.t) / 1000 : 0;
    render(state, series, prevSeries, dt);
    previous = { t: now, series };
    errorEl.textContent = "";
    document.getElementById("updated").textContent = "updated " + new Date(now).toLocaleTimeString() +
      " (every " + PERIOD_MS / 1000 + " s)";
  } catch (e) {
    errorEl.textContent = "Cannot read the admin API: " + e.message + " (showing the last good data)";
  }
}

refresh();
setInterval(refresh, PERIOD_MS);
