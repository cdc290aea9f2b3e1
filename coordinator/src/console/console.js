// Rewind admin console: plain browser JavaScript, no build step, no dependencies.
// Every value from the server is put on the page as text (never as HTML).
"use strict";

const STATUSES = ["begin", "committing", "committed", "rolling_back", "rolled_back",
  "timeout_rolling_back", "timeout_rolled_back", "commit_retrying", "rollback_retrying",
  "rollback_failed"];
// Half messages' statuses, in the order of a message's life.
const MSG_STATUSES = ["prepared", "confirmed", "sent", "consumed", "cancelled", "undecided", "dead"];
const PAGE = 50;
const REFRESH_MS = 2000;

const state = {
  operator: null,
  csrf: null,
  view: "transactions",
  txCursor: [],        // stack of `before` cursors of the pages shown so far
  txSelected: null,
  txLast: [],
  auditBefore: null,
  redriving: new Set(),  // "<resource>/<message>" of redrives waiting for their proxy
  redriveResults: {},    // "<resource>/<message>" → { ok, text } of the last redrive
  redriveLog: [],        // the last few redrive results, newest first
  forcing: new Set(),    // xids whose forced decision is on its way
  forceLog: [],          // the last few forced decisions' results, newest first
  hmCursor: [],          // stack of { before_ms, before_id } cursors of the half-message pages shown so far
  hmLast: [],            // the half messages of the page shown
  hmSelected: null,      // the message whose page is open (null: the lists)
  hmDeciding: new Set(), // message ids whose commit / drop / redrive is on its way
  hmLog: [],             // the last few of those results, newest first
  timer: null,
  busy: false,
};

// ---- tiny DOM helpers ----------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "onclick") el.addEventListener("click", v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

function when(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  return d.toLocaleString(undefined, { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function ago(ms) {
  if (!ms) return "";
  let s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  const parts = [];
  for (const [n, u] of [[86400, "d"], [3600, "h"], [60, "m"], [1, "s"]]) {
    if (s >= n || (u === "s" && parts.length === 0)) {
      parts.push(Math.floor(s / n) + u);
      s %= n;
    }
    if (parts.length === 2) break;
  }
  return parts.join(" ") + " ago";
}

// A duration for people: "850 ms", "3.2 s", "5 min", "2.5 h", "3 d".
function span(ms) {
  if (!ms) return "—";
  if (ms < 1000) return ms + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
  if (ms < 3600000) return Math.round(ms / 60000) + " min";
  if (ms < 86400000) return (ms / 3600000).toFixed(1) + " h";
  return Math.round(ms / 86400000) + " d";
}

function statusTag(st) {
  return h("span", { class: "status " + st }, String(st).replace(/_/g, " "));
}

function pkText(pk) {
  return (pk || []).map((p) => (typeof p === "string" ? p : "0x" + (p.hex || ""))).join(", ");
}

function valueText(v) {
  if (v === null) return "NULL";
  if (typeof v === "string") return v;
  return JSON.stringify(v);
}

// ---- API -----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || "HTTP " + status);
    this.status = status;
    this.body = body;
  }
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  const res = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await res.json(); } catch (_) { /* not JSON */ }
  if (res.status === 401) {
    showLogin();
    throw new ApiError(401, data);
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return { data, res };
}

function banner(msg) {
  const b = $("banner");
  b.textContent = msg || "";
  b.hidden = !msg;
}

// A cluster member that does not lead serves this page but not the API: point the
// operator at the leader (an address the coordinator reported, shown as a link).
function leaderHint(body) {
  if (!body || body.error !== "not_leader") return null;
  if (!body.leader_http) return h("span", {}, "This coordinator is not the cluster leader and no leader is elected yet; retrying.");
  const url = "http://" + body.leader_http + "/";
  return h("span", {}, "This coordinator is not the cluster leader. Open the console on the leader: ",
    h("a", { href: url, "data-testid": "leader-link" }, url));
}

// ---- login ---------------------------------------------------------------------------

function showLogin() {
  state.operator = null;
  state.csrf = null;
  stopTimer();
  $("nav").hidden = true;
  $("who").hidden = true;
  document.querySelectorAll(".view").forEach((v) => (v.hidden = true));
  $("login").hidden = false;
}

function showApp() {
  $("login").hidden = true;
  $("nav").hidden = false;
  $("who").hidden = false;
  $("operator").textContent = state.operator;
  show(state.view);
}

async function login(ev) {
  ev.preventDefault();
  const f = ev.target;
  const err = $("login-error");
  err.hidden = true;
  try {
    const res = await fetch("/api/v1/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify({ name: f.name.value, secret: f.secret.value }),
    });
    const data = await res.json().catch(() => ({}));
    if (!res.ok) {
      const hint = leaderHint(data);
      if (hint) fill(err, hint);
      else err.textContent = res.status === 401 ? "Wrong operator name or secret." : (data.message || "Login failed.");
      err.hidden = false;
      return;
    }
    f.secret.value = "";
    state.operator = data.operator;
    state.csrf = data.csrf;
    showApp();
  } catch (e) {
    err.textContent = "The coordinator did not answer: " + e.message;
    err.hidden = false;
  }
}

async function logout() {
  try { await api("POST", "/api/v1/logout"); } catch (_) { /* already gone */ }
  showLogin();
}

// ---- views ---------------------------------------------------------------------------

function show(view) {
  state.view = view;
  document.querySelectorAll("nav button").forEach((b) => b.classList.toggle("active", b.dataset.view === view));
  document.querySelectorAll(".view").forEach((v) => (v.hidden = v.id !== "view-" + view));
  if (view === "audit") state.auditBefore = null;
  refresh();
  startTimer();
}

function startTimer() {
  stopTimer();
  if ($("live").checked) state.timer = setInterval(() => refresh(true), REFRESH_MS);
}

function stopTimer() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}

async function refresh(background) {
  if (!state.operator || state.busy) return;
  if (background && $("confirm").open) return; // never move things under an open question
  state.busy = true;
  try {
    await Promise.all([
      ({
        transactions: loadTransactions, conflicts: loadConflicts, locks: loadLocks, xa: loadXa,
        messages: loadMessages, "half-messages": loadHalfMessages, audit: loadAudit,
      })[state.view](),
      loadOpenCount(),
      loadUndecidedCount(),
    ]);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString(undefined, { hour12: false });
    banner(null);
  } catch (e) {
    const hint = leaderHint(e.body);
    if (hint) {
      const b = $("banner");
      fill(b, hint);
      b.hidden = false;
    } else if (e.status !== 401) banner("Could not refresh: " + e.message);
  } finally {
    state.busy = false;
  }
}

async function loadOpenCount() {
  const { data } = await api("GET", "/api/v1/conflicts?state=open");
  const n = data.length;
  const b = $("open-count");
  b.textContent = n;
  b.hidden = n === 0;
}

async function loadUndecidedCount() {
  const { data } = await api("GET", "/api/v1/messages?status=undecided&limit=1000");
  const n = data.length;
  const b = $("undecided-count");
  b.textContent = n >= 1000 ? "1000+" : n;
  b.hidden = n === 0;
}

// Transactions ---------------------------------------------------------------------------

async function loadTransactions() {
  const p = new URLSearchParams({ limit: PAGE });
  const st = $("tx-status").value;
  const q = $("tx-search").value.trim();
  if (st) p.set("status", st);
  if (q) p.set("q", q);
  const before = state.txCursor[state.txCursor.length - 1];
  if (before) p.set("before", before);
  const { data } = await api("GET", "/api/v1/transactions?" + p);
  state.txLast = data;
  fill($("tx-rows"), data.map((t) => h("tr", {
    class: "clickable" + (t.xid === state.txSelected ? " selected" : ""),
    dataset: { xid: t.xid },
    onclick: () => { state.txSelected = t.xid; loadTransactions(); },
  },
  h("td", { class: "mono" }, t.xid),
  h("td", {}, t.name),
  h("td", {}, statusTag(t.status)),
  h("td", {}, t.branches.length),
  h("td", {}, when(t.created_ms)),
  h("td", {}, ago(t.updated_ms)))));
  $("tx-empty").hidden = data.length > 0;
  $("tx-newer").disabled = state.txCursor.length === 0;
  $("tx-older").disabled = data.length < PAGE;
  if (state.txSelected) await loadDetail(state.txSelected);
}

async function loadDetail(xid) {
  let t;
  try {
    t = (await api("GET", "/api/v1/transactions/" + encodeURIComponent(xid))).data;
  } catch (e) {
    if (e.status === 404) {
      fill($("tx-detail"), h("p", { class: "muted" }, xid + " is no longer kept (finished transactions are pruned after the retention period)."));
      return;
    }
    throw e;
  }
  const conflicts = (await api("GET", "/api/v1/conflicts?xid=" + encodeURIComponent(xid))).data;
  const open = conflicts.filter((c) => c.state === "open").length;
  fill($("tx-detail"),
    h("h2", {}, h("span", { class: "mono" }, t.xid), " ", statusTag(t.status)),
    h("dl", {},
      h("dt", {}, "Name"), h("dd", {}, t.name || "—"),
      h("dt", {}, "Timeout"), h("dd", {}, (t.timeout_ms / 1000) + " s" + (t.timed_out ? " (timed out)" : "")),
      h("dt", {}, "Started"), h("dd", {}, when(t.created_ms)),
      h("dt", {}, "Deadline"), h("dd", {}, when(t.deadline_ms)),
      t.finished_ms ? [h("dt", {}, "Finished"), h("dd", {}, when(t.finished_ms))] : null,
      h("dt", {}, "Conflicts"), h("dd", {}, conflicts.length === 0 ? "none" :
        h("a", { href: "#", onclick: (e) => { e.preventDefault(); show("conflicts"); } },
          `${conflicts.length} (${open} open)`))),
    h("h3", {}, "Timeline"),
    h("ol", { class: "timeline", "data-testid": "tx-timeline" }, (t.history || []).map((c) =>
      h("li", {}, statusTag(c.status), " ", when(c.at_ms)))),
    h("h3", {}, "Branches"),
    t.branches.length === 0 ? h("p", { class: "muted" }, "No branch registered.") :
      h("table", { class: "grid" },
        h("thead", {}, h("tr", {}, ["Branch", "Type", "Resource", "Status", "Lock keys / calls", "Registered", "Phase-two attempts", "Last error"].map((x) => h("th", {}, x)))),
        h("tbody", {}, t.branches.map((b) => h("tr", { "data-testid": "branch", dataset: { branch: b.branch_id, type: b.type || "at" } },
          h("td", {}, b.branch_id),
          h("td", {}, h("span", { class: "type" }, (b.type || "at").toUpperCase())),
          h("td", { class: "mono" }, b.resource_id),
          h("td", {}, statusTag(b.status), branchActions(t, b)),
          h("td", {}, b.message_id ? messageLink(b.message_id, "branch-message") : b.type === "tcc" ? tccCalls(b) : b.type === "xa" ? h("span", { class: "mono wrap", "data-testid": "xa-id" }, `XA '${t.xid}','${b.xa_bqual}'`) : h("details", {},
            h("summary", {}, `${b.lock_keys.length} key(s)` + (b.locks_held ? ", held" : ", released")),
            h("ul", {}, b.lock_keys.slice(0, 200).map((k) => h("li", { class: "mono wrap" }, `${k.table} [${pkText(k.pk)}]`))),
            b.lock_keys.length > 200 ? h("p", { class: "muted" }, `… and ${b.lock_keys.length - 200} more`) : null)),
          h("td", {}, when(b.registered_ms)),
          h("td", {}, b.phase_two_attempts),
          h("td", { class: b.last_error ? "result-bad" : "muted" }, b.last_error || "—")))))
  );
}

function tccCalls(b) {
  return h("details", {},
    h("summary", {}, "Confirm / Cancel"),
    h("ul", { class: "calls" },
      h("li", {}, h("b", {}, "Confirm "), h("span", { class: "mono" }, b.confirm_url)),
      h("li", {}, h("b", {}, "Cancel "), h("span", { class: "mono" }, b.cancel_url)),
      h("li", {}, h("b", {}, "Payload "), h("span", { class: "mono" }, JSON.stringify(b.payload)))));
}

// A TCC branch of a decided transaction that has not finished its phase two: an operator
// may call the participant again now, or mark it done (audited).
const DECIDED = ["committing", "commit_retrying", "rolling_back", "timeout_rolling_back", "rollback_retrying", "rollback_failed"];

function branchActions(t, b) {
  if (b.type !== "tcc" || !DECIDED.includes(t.status) || b.status === "committed" || b.status === "rolled_back") return null;
  const call = t.status.startsWith("commit") ? "Confirm" : "Cancel";
  return h("div", { class: "actions branch-actions" },
    h("button", { class: "primary", "data-testid": "branch-retry", onclick: () => confirmBranch(t, b, "retry", call) }, `Call ${call} again`),
    h("button", { class: "danger", "data-testid": "branch-mark_done", onclick: () => confirmBranch(t, b, "mark_done", call) }, "Mark done"));
}

async function confirmBranch(t, b, action, call) {
  const body = action === "retry" ?
    [h("p", {}, `Calls ${b.resource_id}'s ${call} (${call === "Confirm" ? b.confirm_url : b.cancel_url}) again now; the attempt count starts over.`),
     h("p", {}, "The participant's fence makes a repeated call harmless.")] :
    [h("p", {}, `Records branch ${b.branch_id} of ${t.xid} as done without calling ${b.resource_id} again.`),
     h("p", {}, `Only if you know its ${call} took effect (or made it so by hand): the coordinator will never call it again.`)];
  const yes = await ask(action === "retry" ? `Call ${call} again?` : "Mark the branch done?", body,
    action === "retry" ? `Call ${call} again` : "Mark done", action !== "retry");
  if (!yes) return;
  try {
    await api("POST", `/api/v1/transactions/${encodeURIComponent(t.xid)}/branches/${b.branch_id}/${action}`);
    banner(null);
  } catch (e) {
    banner(`Branch ${b.branch_id}: ${e.message}`);
  }
  await refresh();
}

// Conflicts ------------------------------------------------------------------------------

const ACTIONS = {
  restore_before: {
    label: "Restore before image",
    title: "Restore the before image?",
    explain: (c) => [
      h("p", {}, "Writes the ", h("b", {}, "Before"), ` values back into ${c.table} [${pkText(c.pk)}], `,
        "replacing what is there now (the ", h("b", {}, "Current"), " column): the other writer's change to this row is lost."),
      h("p", {}, "Safe against races: if the row changed again since this conflict was recorded, the proxy refuses and writes nothing; you will see the new current row."),
      h("p", {}, `Then the rollback of ${c.xid} continues.`),
    ],
    danger: true,
  },
  keep_current: {
    label: "Keep current data",
    title: "Keep the current data?",
    explain: (c) => [
      h("p", {}, `Leaves ${c.table} [${pkText(c.pk)}] exactly as it is now (the `, h("b", {}, "Current"), " column). ",
        "Nothing is written to this row; the global transaction's change to it is not undone."),
      h("p", {}, `Then the rollback of ${c.xid} continues for its other rows.`),
    ],
    danger: false,
  },
  retry: {
    label: "Retry the rollback",
    title: "Retry the rollback?",
    explain: (c) => [
      h("p", {}, `Runs the rollback of ${c.xid}'s branch again, unchanged. Use it after the row was repaired by hand `,
        "so that it equals the ", h("b", {}, "After"), " image again: the rollback then restores the before image."),
      h("p", {}, "If the row still differs, nothing is overwritten and a new conflict is shown."),
    ],
    danger: false,
  },
};

function imageTable(c) {
  const cols = [];
  for (const img of [c.before, c.after, c.current]) {
    if (img && typeof img === "object") for (const k of Object.keys(img)) if (!cols.includes(k)) cols.push(k);
  }
  const cell = (img, col, cls) => {
    if (img === null || img === undefined) return h("td", { class: "none" }, "(no row)");
    if (!(col in img)) return h("td", { class: "none" }, "—");
    return h("td", { class: "mono wrap " + cls }, valueText(img[col]));
  };
  const same = (a, b, col) => {
    const av = a && typeof a === "object" ? a[col] : undefined;
    const bv = b && typeof b === "object" ? b[col] : undefined;
    return (a === null) === (b === null) && JSON.stringify(av) === JSON.stringify(bv);
  };
  return h("table", { class: "grid images", "data-testid": "cf-images" },
    h("thead", {}, h("tr", {},
      h("th", { class: "col" }, "Column"),
      h("th", {}, "Before (as it was)"),
      h("th", {}, "After (what the transaction wrote)"),
      h("th", {}, "Current (in the database now)"))),
    h("tbody", {}, cols.map((col) => h("tr", {},
      h("th", { class: "col mono" }, col),
      cell(c.before, col, ""),
      cell(c.after, col, same(c.before, c.after, col) ? "" : "chg"),
      cell(c.current, col, same(c.after, c.current, col) ? "" : "dirty")))));
}

function conflictCard(c) {
  const open = c.state === "open";
  return h("div", { class: "card" + (open ? " open" : ""), "data-testid": "conflict", dataset: { id: c.id, xid: c.xid } },
    h("h3", {}, `Conflict #${c.id}`, statusTag(c.state),
      h("span", { class: "mono" }, `${c.table} [${pkText(c.pk)}]`),
      h("span", { class: "muted" }, `transaction ${c.xid} · branch ${c.branch_id} · resource ${c.resource_id} · updated ${ago(c.updated_ms)}`),
      c.action ? h("span", { class: "muted" }, "settled by: " + c.action.replace(/_/g, " ")) : null),
    c.last_error ? h("p", { class: "error", "data-testid": "cf-error" }, "Last attempt refused: " + c.last_error) : null,
    imageTable(c),
    h("p", { class: "legend" }, h("span", { class: "chg" }, "changed by the transaction"), " ",
      h("span", { class: "dirty" }, "changed by someone else since (the dirty write)")),
    open ? h("div", { class: "actions" }, Object.entries(ACTIONS).map(([key, a]) =>
      h("button", {
        class: a.danger ? "danger" : "primary",
        "data-testid": "action-" + key,
        onclick: () => confirmResolve(c, key),
      }, a.label))) : null);
}

async function loadConflicts() {
  const all = $("cf-all").checked;
  const { data } = await api("GET", "/api/v1/conflicts" + (all ? "" : "?state=open"));
  fill($("cf-list"), data.map(conflictCard));
  $("cf-empty").hidden = data.length > 0;
}

function ask(title, body, okLabel, danger) {
  const d = $("confirm");
  $("confirm-title").textContent = title;
  fill($("confirm-body"), body);
  const ok = $("confirm-ok");
  ok.textContent = okLabel;
  ok.className = danger ? "danger" : "primary";
  d.returnValue = "";
  return new Promise((resolve) => {
    d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
    d.showModal();
  });
}

async function confirmResolve(c, key) {
  const a = ACTIONS[key];
  const yes = await ask(a.title, a.explain(c), a.label, a.danger);
  if (!yes) return;
  try {
    const { data } = await api("POST", `/api/v1/conflicts/${c.id}/resolve`, { action: key });
    if (data.state === "open" && data.last_error) banner(`Conflict #${c.id}: refused — ${data.last_error}`);
    else banner(null);
  } catch (e) {
    banner(`Conflict #${c.id}: ${e.message}`);
  }
  await refresh();
}

// Locks ----------------------------------------------------------------------------------

async function loadLocks() {
  const { data, res } = await api("GET", "/api/v1/locks?limit=1000");
  const total = Number(res.headers.get("x-total-count") || data.length);
  $("lk-summary").textContent = total === 0 ? "No global locks held." :
    `${total} global lock(s) held` + (total > data.length ? `; the first ${data.length} shown.` : ".");
  fill($("lk-rows"), data.map((l) => h("tr", {},
    h("td", { class: "mono" }, l.resource_id),
    h("td", { class: "mono" }, l.table),
    h("td", { class: "mono wrap" }, pkText(l.pk)),
    h("td", { class: "mono" }, h("a", { href: "#", onclick: (e) => { e.preventDefault(); openTx(l.xid); } }, l.xid)),
    h("td", {}, l.branch_id),
    h("td", {}, statusTag(l.status)),
    h("td", { title: when(l.since_ms) }, ago(l.since_ms)))));
}

function openTx(xid) {
  state.txSelected = xid;
  $("tx-search").value = xid;
  state.txCursor = [];
  show("transactions");
}

// XA (prepared branches and who waits on them) --------------------------------------------

function waitersList(b) {
  if (!b.waiters.length) return h("span", { class: "muted" }, "none");
  return h("ul", { class: "waiters" }, b.waiters.map((w) =>
    h("li", { class: "xa-waiter", "data-testid": "xa-waiter", dataset: { thread: w.thread_id } },
      h("b", {}, "thread " + w.thread_id), " · waiting ", h("span", { class: "waited" }, w.waiting_ms ? span(w.waiting_ms) : "< 1 s"),
      h("span", { class: "query mono" }, w.query || "(no statement)"))));
}

async function loadXa() {
  const { data } = await api("GET", "/api/v1/xa");
  const branches = data.branches;
  fill($("xa-log"), state.forceLog.map((x) =>
    h("li", { class: x.ok ? "result-ok" : "result-bad", dataset: { xid: x.xid } }, x.text)));
  fill($("xa-rows"), branches.map((b) => {
    const busy = state.forcing.has(b.xid);
    const undecided = b.status === "begin";
    return h("tr", {
      class: "xa-row" + (b.waiters.length ? " blocking" : ""),
      "data-testid": "xa-row",
      dataset: { xid: b.xid, bqual: b.xa_bqual },
    },
    h("td", { class: "mono" }, h("a", { href: "#", "data-testid": "xa-xid", onclick: (e) => { e.preventDefault(); openTx(b.xid); } }, b.xid)),
    h("td", { class: "mono" }, b.resource_id),
    h("td", {}, b.branch_id, h("div", { class: "muted mono wrap", title: "XA branch qualifier" }, b.xa_bqual)),
    h("td", { class: "xa-age", title: "registered " + when(b.registered_ms) }, span(b.age_ms)),
    h("td", {}, statusTag(b.status)),
    h("td", {}, waitersList(b)),
    h("td", {}, undecided ? h("div", { class: "actions branch-actions" },
      h("button", { class: "primary", "data-testid": "force-commit", disabled: busy, onclick: () => confirmForce(b, "commit") }, "Force commit"),
      h("button", { class: "danger", "data-testid": "force-rollback", disabled: busy, onclick: () => confirmForce(b, "rollback") }, "Force rollback"))
      : h("span", { class: "muted" }, "decided: phase two is running")));
  }));
  $("xa-empty").hidden = branches.length > 0;
}

async function confirmForce(b, decision) {
  const waiting = b.waiters.length ? ` ${b.waiters.length} session(s) wait on its row locks.` : "";
  const body = decision === "commit" ?
    [h("p", {}, `Commits global transaction ${b.xid} now: every branch of it, this prepared XA branch on ${b.resource_id} included, is committed.${waiting}`),
     h("p", {}, "Only if you know its application meant to commit (or will not come back): the decision is final.")] :
    [h("p", {}, `Rolls back global transaction ${b.xid} now: every branch of it is undone, this prepared XA branch on ${b.resource_id} with XA ROLLBACK.${waiting}`),
     h("p", {}, "Its application's COMMIT will be refused: the decision is final.")];
  const label = decision === "commit" ? "Force commit" : "Force rollback";
  if (!await ask(label + "?", body, label, decision === "rollback")) return;
  state.forcing.add(b.xid);
  await loadXa().catch(() => {}); // show the buttons as busy
  let entry;
  try {
    const { data } = await api("POST", `/api/v1/transactions/${encodeURIComponent(b.xid)}/force`, { decision });
    entry = { ok: true, xid: b.xid, text: `${b.xid}: ${label.toLowerCase()} — now ${data.status.replace(/_/g, " ")}` };
  } catch (e) {
    entry = { ok: false, xid: b.xid, text: `${b.xid}: ${label.toLowerCase()} refused — ${e.message}` };
  } finally {
    state.forcing.delete(b.xid);
  }
  state.forceLog.unshift(entry);
  state.forceLog.length = Math.min(state.forceLog.length, 5);
  try {
    await loadXa();
  } catch (e) {
    if (e.status !== 401) banner("Could not refresh: " + e.message);
  }
}

// Messages (outbox and barrier) ----------------------------------------------------------

async function loadMessages() {
  const [outbox, dead] = await Promise.all([
    api("GET", "/api/v1/outbox"),
    api("GET", "/api/v1/outbox/dead"),
  ]);
  fill($("ob-rows"), outbox.data.map((r) => h("tr", {
    class: "outbox-row" + (r.stale ? " stale" : ""),
    dataset: { resource: r.resource_id },
  },
  h("td", { class: "mono" }, r.resource_id, h("div", { class: "muted" }, r.proxy_id)),
  h("td", { class: r.broker ? "mono wrap" : "muted" }, r.broker || "no relay configured"),
  h("td", { class: "num ob-new" }, r.new, r.held ? h("span", { class: "muted" }, ` (${r.held} held)`) : null),
  h("td", { class: "num ob-age" }, span(r.oldest_new_age_ms)),
  h("td", { class: "num ob-dead" + (r.dead ? " result-bad" : "") }, r.dead),
  h("td", { class: "num" }, r.published_total),
  h("td", { class: "num" }, r.failed_total),
  h("td", { class: r.last_error ? "result-bad wrap" : "muted" }, r.last_error || "—"),
  h("td", { class: "num" }, r.barrier_rows),
  h("td", { class: "num" }, r.barrier_duplicates),
  h("td", { title: "read by the proxy " + when(r.read_at_ms) },
    ago(r.received_at_ms), " ", r.stale ? statusTag("stale") : null))));
  $("ob-empty").hidden = outbox.data.length > 0;

  fill($("redrive-log"), state.redriveLog.map((x) =>
    h("li", { class: x.ok ? "result-ok" : "result-bad", dataset: { messageId: x.message_id } }, x.text)));
  fill($("dead-rows"), dead.data.map((d) => {
    const key = d.resource_id + "/" + d.message_id;
    const result = state.redriveResults[key];
    const busy = state.redriving.has(key);
    return h("tr", { class: "dead-row", dataset: { resource: d.resource_id, messageId: d.message_id } },
      h("td", { class: "mono" }, d.resource_id),
      h("td", { class: "mono wrap" }, d.message_id),
      h("td", { class: "mono" }, d.topic),
      h("td", { class: "mono wrap" }, d.msg_key || "—"),
      h("td", { class: "num" }, d.attempts),
      h("td", { class: "result-bad wrap" }, d.last_error),
      h("td", { title: when(d.created_at_ms) }, ago(d.created_at_ms)),
      h("td", {},
        h("button", {
          class: "redrive primary",
          "data-testid": "redrive",
          disabled: busy,
          onclick: () => redrive(d),
        }, busy ? "Redriving…" : "Redrive"),
        result ? h("span", { class: "redrive-result " + (result.ok ? "result-ok" : "result-bad") }, result.text) : null));
  }));
  $("dead-empty").hidden = dead.data.length > 0;
}

async function redrive(d) {
  const key = d.resource_id + "/" + d.message_id;
  if (state.redriving.has(key)) return;
  state.redriving.add(key);
  delete state.redriveResults[key];
  await loadMessages().catch(() => {}); // show the button as busy
  let result;
  try {
    await api("POST", `/api/v1/outbox/${encodeURIComponent(d.resource_id)}/messages/${encodeURIComponent(d.message_id)}/redrive`);
    result = { ok: true, text: "Redriven: NEW again, the relay sends it next." };
  } catch (e) {
    result = { ok: false, text: e.status === 404 ? "Not DEAD any more: " + e.message : "Not redriven: " + e.message };
  } finally {
    state.redriving.delete(key);
  }
  state.redriveResults[key] = result;
  state.redriveLog.unshift({ ok: result.ok, message_id: d.message_id, text: `${d.message_id} on ${d.resource_id}: ${result.text}` });
  state.redriveLog.length = Math.min(state.redriveLog.length, 5);
  // Straight away, not through refresh(): a background refresh in flight would skip it.
  try {
    await loadMessages();
  } catch (e) {
    if (e.status !== 401) banner("Could not refresh: " + e.message);
  }
}

// Half messages (the message service) --------------------------------------------------

function messageLink(id, testid) {
  return h("a", { href: "#", class: "mono wrap", "data-testid": testid, dataset: { messageId: id },
    onclick: (e) => { e.preventDefault(); openMessage(id); } }, id);
}

// The lists, or one message's page, whichever the state says.
function hmLayout() {
  $("hm-list-part").hidden = !!state.hmSelected;
  $("hm-page").hidden = !state.hmSelected;
}

function openMessage(id) {
  state.hmSelected = id;
  hmLayout();
  fill($("hm-page"), h("p", { class: "muted" }, "Loading " + id + " …"));
  if (state.view !== "half-messages") show("half-messages");
  // Straight away, not only through refresh(): a background refresh in flight skips it.
  reloadHalfMessages();
}

function closeMessage() {
  state.hmSelected = null;
  hmLayout();
  reloadHalfMessages();
}

async function reloadHalfMessages() {
  try {
    await loadHalfMessages();
  } catch (e) {
    if (e.status !== 401) banner("Could not refresh: " + e.message);
  }
}

async function loadHalfMessages() {
  fill($("hm-log"), state.hmLog.map((x) =>
    h("li", { class: x.ok ? "result-ok" : "result-bad", dataset: { messageId: x.message_id } }, x.text)));
  const selected = state.hmSelected;
  if (selected) {
    await loadMessagePage(selected);
  } else {
    await loadMessageLists();
  }
  hmLayout();
}

async function loadMessageLists() {
  const p = new URLSearchParams();
  const st = $("hm-status").value;
  if (st) p.set("status", st);
  // Pages go by (creation time, id) of the last message shown: exact, ties included.
  const cursor = state.hmCursor[state.hmCursor.length - 1];
  const limit = PAGE;
  p.set("limit", limit);
  if (cursor) {
    p.set("before_ms", cursor.before_ms);
    p.set("before_id", cursor.before_id);
  }
  const [undecided, list] = await Promise.all([
    api("GET", "/api/v1/messages?status=undecided&limit=1000"),
    api("GET", "/api/v1/messages?" + p),
  ]);
  const now = Date.now();
  fill($("hm-undecided-rows"), undecided.data.map((m) => {
    const busy = state.hmDeciding.has(m.message_id);
    return h("tr", { class: "hm-undecided-row", "data-testid": "hm-undecided-row", dataset: { messageId: m.message_id } },
      h("td", {}, messageLink(m.message_id, "hm-open")),
      h("td", { class: "mono" }, m.topic),
      h("td", { class: "mono" }, m.resource_id || "—", m.proxy_id ? h("div", { class: "muted" }, m.proxy_id) : null),
      h("td", { class: "hm-age", title: "prepared " + when(m.created_ms) }, span(Math.max(1, now - m.created_ms))),
      h("td", { class: "num" }, m.checks),
      h("td", { class: m.last_error ? "result-bad wrap" : "muted" }, m.last_error || "—"),
      h("td", {}, h("div", { class: "actions branch-actions" },
        h("button", { class: "primary", "data-testid": "hm-commit", disabled: busy, onclick: () => confirmMessage(m, "commit") }, "Commit"),
        h("button", { class: "danger", "data-testid": "hm-drop", disabled: busy, onclick: () => confirmMessage(m, "drop") }, "Drop"))));
  }));
  $("hm-undecided-empty").hidden = undecided.data.length > 0;

  const data = list.data;
  state.hmLast = data;
  fill($("hm-rows"), data.map((m) => h("tr", {
    class: "clickable hm-row",
    "data-testid": "hm-row",
    dataset: { messageId: m.message_id, status: m.status },
    onclick: () => openMessage(m.message_id),
  },
  h("td", { class: "mono wrap" }, m.message_id),
  h("td", { class: "mono" }, m.topic),
  h("td", {}, statusTag(m.status)),
  h("td", { class: m.resource_id ? "mono" : "muted" }, m.resource_id || "—"),
  h("td", {}, when(m.created_ms)),
  h("td", { title: when(m.updated_ms) }, ago(m.updated_ms)),
  h("td", { class: "num" }, m.checks),
  h("td", { class: m.last_error ? "result-bad wrap" : "muted" }, m.last_error || "—"))));
  $("hm-empty").hidden = data.length > 0;
  $("hm-newer").disabled = state.hmCursor.length === 0;
  $("hm-older").disabled = list.data.length < limit;
}

function olderMessages() {
  const last = state.hmLast[state.hmLast.length - 1];
  if (!last) return;
  state.hmCursor.push({ before_ms: last.created_ms, before_id: last.message_id });
  reloadHalfMessages();
}

function field(name, key, ...value) {
  return [h("dt", {}, name), h("dd", { dataset: { field: key } }, ...value)];
}

async function loadMessagePage(id) {
  let m;
  try {
    m = (await api("GET", "/api/v1/messages/" + encodeURIComponent(id))).data;
  } catch (e) {
    if (e.status === 404) {
      fill($("hm-page"), backButton(), h("p", { class: "muted" }, "No message " + id + " on this coordinator."));
      return;
    }
    throw e;
  }
  if (state.hmSelected !== id) return; // the operator went elsewhere meanwhile
  const history = m.history || [];
  const headers = Object.entries(m.headers || {});
  const consumers = m.consumers || [];
  fill($("hm-page"),
    backButton(),
    h("h2", {}, h("span", { class: "mono", "data-testid": "hm-id" }, m.message_id), " ",
      h("span", { "data-testid": "hm-status-tag" }, statusTag(m.status))),
    messageActions(m),
    h("dl", { "data-testid": "hm-fields" },
      field("Topic", "topic", h("span", { class: "mono" }, m.topic)),
      field("Key", "key", m.key ? h("span", { class: "mono" }, m.key) : "—"),
      field("Status", "status", m.status),
      field("Producer's resource", "resource", m.resource_id ? h("span", { class: "mono" }, m.resource_id) :
        h("span", { class: "muted" }, m.xid ? "— (a message branch)" :
          m.status === "prepared" ? "not known yet: no proxy has seen its MSG tag" : "— (no proxy saw its MSG tag)")),
      field("Through proxy", "proxy", m.proxy_id ? h("span", { class: "mono" }, m.proxy_id) : "—"),
      field("Global transaction", "xid", m.xid ?
        [h("a", { href: "#", class: "mono", "data-testid": "hm-xid", onclick: (e) => { e.preventDefault(); openTx(m.xid); } }, m.xid),
          ` · branch ${m.branch_id}`] :
        h("span", { class: "muted" }, "none: its producer's local transaction decides it")),
      m.xid ? null : field("Check-back", "check_after", span(m.check_after_ms) + " after it was prepared, while still undecided"),
      field("Created", "created", when(m.created_ms)),
      field("Updated", "updated", when(m.updated_ms), " ", h("span", { class: "muted" }, "(" + ago(m.updated_ms) + ")")),
      field("Check-backs", "checks", String(m.checks), h("span", { class: "muted" }, " that decided nothing")),
      field("Failed publishes", "publish_failures", String(m.publish_failures)),
      field("Last error", "last_error", m.last_error ? h("span", { class: "result-bad wrap" }, m.last_error) : "—"),
      field("Consumers", "consumers", consumers.length ?
        h("ul", { class: "calls" }, consumers.map((c) => h("li", { class: "mono" }, c))) :
        h("span", { class: "muted" }, "none has consumed it through a Rewind barrier yet"))),
    h("h3", {}, "Life"),
    h("ol", { class: "timeline hm-timeline", "data-testid": "hm-timeline" }, history.map((ev) =>
      h("li", { class: "hm-event", dataset: { event: ev.event, at: ev.at_ms } },
        h("span", { class: "hm-when" }, when(ev.at_ms)), " ",
        statusTag(ev.event), " ",
        h("span", { class: "muted" }, "+" + (ev.at_ms - m.created_ms > 0 ? span(ev.at_ms - m.created_ms) : "0 ms")),
        ev.detail ? h("div", { class: "hm-detail wrap" }, ev.detail) : null))),
    h("h3", {}, "Payload"),
    h("pre", { class: "payload mono", "data-testid": "hm-payload" }, m.payload),
    h("h3", {}, "Headers"),
    headers.length === 0 ? h("p", { class: "muted", "data-testid": "hm-headers" }, "none") :
      h("table", { class: "grid", "data-testid": "hm-headers" },
        h("thead", {}, h("tr", {}, h("th", {}, "Header"), h("th", {}, "Value"))),
        h("tbody", {}, headers.map(([k, v]) => h("tr", {},
          h("td", { class: "mono" }, k), h("td", { class: "mono wrap" }, v))))));
}

function backButton() {
  return h("div", { class: "toolbar" },
    h("button", { "data-testid": "hm-back", onclick: closeMessage }, "\u2190 All half messages"));
}

function messageActions(m) {
  const busy = state.hmDeciding.has(m.message_id);
  if (m.status === "dead") {
    return h("div", { class: "actions" },
      h("button", { class: "primary", "data-testid": "hm-redrive", disabled: busy, onclick: () => confirmRedrive(m) }, "Redrive"));
  }
  if (m.status !== "undecided" && m.status !== "prepared") return null;
  if (m.xid) return h("p", { class: "muted" }, "Its global transaction decides it: commit or roll back that.");
  return h("div", { class: "actions" },
    h("button", { class: "primary", "data-testid": "hm-commit", disabled: busy, onclick: () => confirmMessage(m, "commit") }, "Commit"),
    h("button", { class: "danger", "data-testid": "hm-drop", disabled: busy, onclick: () => confirmMessage(m, "drop") }, "Drop"));
}

async function confirmMessage(m, decision) {
  const where = m.resource_id ? `on ${m.resource_id}` : "(its resource is not known)";
  const checked = m.status === "undecided" ? "could not confirm" : "has not yet confirmed";
  const tried = m.checks ? ` (${m.checks} check-back(s)` + (m.last_error ? `; the last said: ${m.last_error})` : ")") : "";
  const body = decision === "commit" ?
    [h("p", {}, `Commits message ${m.message_id} (topic ${m.topic}): it will be published to its consumers, `,
      `although check-back ${checked} that its producer's local transaction ${where} committed${tried}.`),
     h("p", {}, "Only if you know that transaction committed: consumers will act on the message, and the decision is final.")] :
    [h("p", {}, `Drops message ${m.message_id} (topic ${m.topic}): it is cancelled and never sent.`),
     h("p", {}, `If its producer's local transaction ${where} did commit, its consumers will never hear of it. The decision is final.`)];
  const label = decision === "commit" ? "Commit" : "Drop";
  if (!await ask(`${label} the message?`, body, label + " message", decision === "drop")) return;
  await messageCall(m, `/api/v1/messages/${encodeURIComponent(m.message_id)}/force`, { decision }, decision);
}

async function confirmRedrive(m) {
  const body = [
    h("p", {}, `Publishes dead message ${m.message_id} (topic ${m.topic}) again: it goes back to confirmed, `,
      "its attempts cleared, and is sent next under the same message id."),
    h("p", {}, `It failed ${m.publish_failures} publish attempt(s)` + (m.last_error ? `; the last error: ${m.last_error}.` : ".") +
      " Unless the cause is gone (for example, no queue was bound to its topic), it will go dead again."),
  ];
  if (!await ask("Redrive the message?", body, "Redrive", false)) return;
  await messageCall(m, `/api/v1/messages/${encodeURIComponent(m.message_id)}/redrive`, undefined, "redrive");
}

async function messageCall(m, path, body, what) {
  state.hmDeciding.add(m.message_id);
  await loadHalfMessages().catch(() => {}); // show the buttons as busy
  let entry;
  try {
    const { data } = await api("POST", path, body);
    entry = { ok: true, message_id: m.message_id, text: `${m.message_id}: ${what} — now ${data.status}` };
  } catch (e) {
    entry = { ok: false, message_id: m.message_id, text: `${m.message_id}: ${what} refused — ${e.message}` };
  } finally {
    state.hmDeciding.delete(m.message_id);
  }
  state.hmLog.unshift(entry);
  state.hmLog.length = Math.min(state.hmLog.length, 5);
  await reloadHalfMessages();
}

// Audit ----------------------------------------------------------------------------------

async function loadAudit(more) {
  const p = new URLSearchParams({ limit: 100 });
  if (more && state.auditBefore) p.set("before", state.auditBefore);
  const { data } = await api("GET", "/api/v1/audit?" + p);
  const rows = data.map((a) => h("tr", {},
    h("td", {}, a.id),
    h("td", {}, when(a.at_ms)),
    h("td", {}, a.who),
    h("td", {}, a.action),
    h("td", { class: "mono wrap" }, a.target),
    h("td", { class: a.result.startsWith("ok") ? "result-ok" : "result-bad" }, a.result)));
  if (more) $("audit-rows").append(...rows);
  else fill($("audit-rows"), rows);
  if (data.length) state.auditBefore = data[data.length - 1].id;
  $("audit-more").disabled = data.length < 100;
}

// ---- wiring --------------------------------------------------------------------------

async function start() {
  fill($("tx-status"), h("option", { value: "" }, "any"), STATUSES.map((s) => h("option", { value: s }, s.replace(/_/g, " "))));
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => {
    if (b.dataset.view === "half-messages") state.hmSelected = null;
    show(b.dataset.view);
  }));
  $("live").addEventListener("change", startTimer);
  $("tx-status").addEventListener("change", () => { state.txCursor = []; refresh(); });
  let typing;
  $("tx-search").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => { state.txCursor = []; refresh(); }, 300);
  });
  $("tx-older").addEventListener("click", () => {
    const last = state.txLast[state.txLast.length - 1];
    if (last) { state.txCursor.push(last.xid); refresh(); }
  });
  $("tx-newer").addEventListener("click", () => { state.txCursor.pop(); refresh(); });
  $("cf-all").addEventListener("change", () => refresh());
  fill($("hm-status"), h("option", { value: "" }, "all"), MSG_STATUSES.map((s) => h("option", { value: s }, s)));
  $("hm-status").addEventListener("change", () => { state.hmCursor = []; reloadHalfMessages(); });
  $("hm-older").addEventListener("click", olderMessages);
  $("hm-newer").addEventListener("click", () => { state.hmCursor.pop(); reloadHalfMessages(); });
  $("audit-more").addEventListener("click", () => loadAudit(true));
  // A reloaded page keeps its session (the cookie) and gets its CSRF token back.
  try {
    const { data } = await api("GET", "/api/v1/session");
    state.operator = data.operator;
    state.csrf = data.csrf;
    showApp();
  } catch (_) {
    showLogin();
  }
}

document.addEventListener("DOMContentLoaded", start);
