// keyrelay dashboard: served as /admin/dashboard.js, so the page needs no inline script.
"use strict";
const tokenInput = document.getElementById("token");
tokenInput.value = sessionStorage.getItem("keyrelay-admin-token") || "";
tokenInput.addEventListener("change", () => { sessionStorage.setItem("keyrelay-admin-token", tokenInput.value); refresh(); });

function headers() { return { "Authorization": "Bearer " + tokenInput.value }; }

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (cls) td.className = cls;
  return td;
}

function render(doc) {
  document.getElementById("store").textContent = doc.store;
  document.getElementById("stamp").textContent = doc.timestamp;
  const root = document.getElementById("pools");
  root.replaceChildren();
  for (const pool of doc.pools) {
    const h = document.createElement("h2");
    h.textContent = pool.tenant + " / " + pool.provider + " (" + pool.route + ", " + pool.strategy + ") · " +
      pool.total_requests_this_minute + " / " + pool.capacity + " requests this minute";
    root.appendChild(h);
    const table = document.createElement("table");
    table.dataset.pool = pool.pool;
    table.dataset.tenant = pool.tenant;
    table.dataset.provider = pool.provider;
    const head = table.createTHead().insertRow();
    for (const t of ["#", "key", "group", "fingerprint", "state", "reason", "until", "this minute", "used", "total", "last status", "remaining req/tok", "actions"]) {
      const th = document.createElement("th"); th.textContent = t; head.appendChild(th);
    }
    const body = table.createTBody();
    for (const k of pool.keys) {
      const row = body.insertRow();
      row.dataset.key = k.name;
      cell(row, k.index);
      cell(row, k.name);
      cell(row, k.group, "group");
      cell(row, k.fingerprint, "muted");
      const st = cell(row, "");
      const badge = document.createElement("span");
      badge.className = "state " + k.state; badge.textContent = k.state;
      st.appendChild(badge);
      cell(row, k.reason);
      // Time of day is enough next to a live table; the full timestamp is the cell's tooltip.
      const until = cell(row, k.until ? k.until.slice(11, 19) + "Z" : null);
      if (k.until) until.title = k.until;
      cell(row, k.requests_this_minute + " / " + k.rpm_limit);
      const used = cell(row, "");
      const meter = document.createElement("span"); meter.className = "meter";
      const fill = document.createElement("span"); fill.style.width = Math.min(100, k.percent_used) + "%";
      meter.appendChild(fill); used.appendChild(meter);
      used.appendChild(document.createTextNode(" " + k.percent_used + "%"));
      cell(row, k.total_requests);
      cell(row, k.last_status);
      cell(row, (k.remaining_requests ?? "–") + " / " + (k.remaining_tokens ?? "–"));
      const actions = row.insertCell();
      for (const action of ["reset", "disable", "enable"]) {
        const b = document.createElement("button");
        b.textContent = action;
        b.dataset.action = action;
        b.addEventListener("click", () => act(pool.pool, k.name, action));
        actions.appendChild(b);
      }
    }
    root.appendChild(table);
  }
}

async function act(pool, key, action) {
  const url = "/admin/keys/" + encodeURIComponent(pool) + "/" + encodeURIComponent(key) + "/" + action;
  const resp = await fetch(url, { method: "POST", headers: headers() });
  document.getElementById("msg").textContent = resp.ok ? "" : action + " failed: HTTP " + resp.status;
  await refresh();
}

async function refresh() {
  try {
    const resp = await fetch("/admin/api-keys/status", { headers: headers(), cache: "no-store" });
    if (!resp.ok) {
      document.getElementById("msg").textContent = resp.status === 401 ? "enter the admin token" : "HTTP " + resp.status;
      return;
    }
    document.getElementById("msg").textContent = "";
    render(await resp.json());
  } catch (e) {
    document.getElementById("msg").textContent = "keyrelay did not answer";
  }
}

refresh();
setInterval(refresh, 2000);
