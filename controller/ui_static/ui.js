// Gantry's UI: plain ES modules, no build step, no library. Every text from the server goes into the
// page as text (never as HTML), and the page talks only to the server that served it.

const STATE_ICONS = {
  Synced: "✔", OutOfSync: "↻", Failed: "✖", Healthy: "♥", Progressing: "◔", Degraded: "✖",
  Suspended: "⏸", Missing: "?", Unknown: "?", Succeeded: "✔", Running: "◔", Error: "✖",
  Normal: "ℹ", Warning: "⚠",
};

let session = null;  // {user, csrf, readOnly, local}
let stream = null;   // the EventSource of the page shown

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// replaceChildren, leaving out the absent (null, false) and flattening lists, as el() does.
function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((child) => child !== null && child !== undefined && child !== false));
}

function state(value) {
  const word = value || "Unknown";
  return el("span", { class: `state s-${word}` },
    el("span", { class: "icon", "aria-hidden": "true" }, STATE_ICONS[word] || "•"), " ", word);
}

function announce(text) {
  document.getElementById("announce").textContent = text;
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  if (options.method && options.method !== "GET" && session && session.csrf) headers["X-Gantry-CSRF"] = session.csrf;
  const response = await fetch(path, {
    method: options.method || "GET", headers, credentials: "same-origin",
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(data.error || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function since(timestamp) {
  if (!timestamp) return "";
  const seconds = Math.max(0, (Date.now() - Date.parse(timestamp)) / 1000);
  if (seconds < 60) return `${Math.round(seconds)}s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)}m ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)}h ago`;
  return `${Math.round(seconds / 86400)}d ago`;
}

function failureText(failure) {
  return `${failure.kind} ${failure.namespace ? failure.namespace + "/" : ""}${failure.name}: ${failure.message}`;
}

function appPath(app) {
  return `/apps/${encodeURIComponent(app.namespace)}/${encodeURIComponent(app.name)}`;
}

function urlLinks(urls) {
  return (urls || []).map((url) => el("div", {}, /^https?:\/\//.test(url) ? el("a", { href: url, rel: "noreferrer" }, url) : url));
}

function go(path) {
  history.pushState({}, "", path);
  route();
}

function link(path, text) {
  return el("a", {
    href: path,
    onclick: (event) => {
      if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
      event.preventDefault();
      go(path);
    },
  }, text);
}

function show(...children) {
  const main = document.getElementById("main");
  fill(main, ...children);
}

// ------------------------------------------------------------------------------ session

async function loadSession() {
  session = await api("/api/v1/session");
  const nav = document.getElementById("session");
  fill(nav);
  if (session.user) {
    nav.append(el("span", {}, `Signed in as ${session.user}${session.readOnly ? " (read-only)" : ""}`));
    if (!session.local && !session.readOnly) {
      nav.append(el("button", { class: "link", type: "button", onclick: signOut }, "Sign out"));
    }
  }
}

async function signOut() {
  await api("/api/v1/logout", { method: "POST", body: {} });
  session = null;
  go("/login");
}

function loginPage() {
  document.title = "Sign in · Gantry";
  const token = el("textarea", { id: "token", name: "token", required: true, autocomplete: "off", spellcheck: "false" });
  const problem = el("div", { role: "alert" });
  const form = el("form", {
    class: "login",
    onsubmit: async (event) => {
      event.preventDefault();
      fill(problem);
      try {
        await api("/api/v1/login", { method: "POST", body: { token: token.value } });
        await loadSession();
        go("/");
      } catch (error) {
        fill(problem, el("p", { class: "alert" }, error.message));
      }
    },
  },
  el("label", { for: "token" }, "Bearer token (a ServiceAccount token from `kubectl create token NAME`, or an OIDC id token your cluster accepts)"),
  token, problem, el("div", {}, el("button", { class: "primary", type: "submit" }, "Sign in")));
  show(el("h1", {}, "Sign in to Gantry"),
    el("p", { class: "note" }, "Gantry acts as you: what you may see and do is what Kubernetes RBAC lets your token do."),
    form);
}

// ------------------------------------------------------------------------------ the list

function listPage() {
  document.title = "Applications · Gantry";
  const apps = new Map();
  const filters = { text: "", sync: "", health: "", namespace: "", repo: "" };
  const count = el("p", { class: "count", "aria-live": "polite" });
  const body = el("tbody");
  const selects = {};

  function option(value, label) { return el("option", { value }, label); }

  function filterSelect(key, label, values) {
    const select = selects[key] || el("select", {
      id: `filter-${key}`, onchange: (event) => { filters[key] = event.target.value; render(); },
    });
    const current = select.value;
    fill(select, option("", "All"), ...[...values].sort().map((value) => option(value, value)));
    select.value = [...values].includes(current) ? current : "";
    filters[key] = select.value;
    if (!selects[key]) {
      selects[key] = select;
      return el("label", { for: select.id }, label, select);
    }
    return null;
  }

  const search = el("input", {
    id: "filter-text", type: "search", placeholder: "name", autocomplete: "off",
    oninput: (event) => { filters.text = event.target.value.trim().toLowerCase(); render(); },
  });
  const bar = el("div", { class: "filters", role: "search" }, el("label", { for: "filter-text" }, "Search", search));
  for (const [key, label] of [["sync", "Sync"], ["health", "Health"], ["namespace", "Namespace"], ["repo", "Repository"]]) {
    bar.append(filterSelect(key, label, new Set()));
  }

  function refreshChoices() {
    const values = { sync: new Set(), health: new Set(), namespace: new Set(), repo: new Set() };
    for (const app of apps.values()) {
      values.sync.add(app.sync); values.health.add(app.health);
      values.namespace.add(app.namespace); values.repo.add(app.repo);
    }
    for (const key of Object.keys(values)) filterSelect(key, "", values[key]);
  }

  function row(app) {
    return el("tr", { "data-app": `${app.namespace}/${app.name}` },
      el("td", {}, link(appPath(app), app.name), el("div", { class: "note" }, app.namespace)),
      el("td", {}, state(app.sync)),
      el("td", {}, state(app.health)),
      el("td", {}, el("code", { title: app.revision }, app.shortRevision || "-"),
        app.commitMessage ? el("div", { class: "commit" }, app.commitMessage) : null,
        app.commitAuthor ? el("div", { class: "note" }, app.commitAuthor) : null),
      el("td", {}, app.repo, el("div", { class: "note" }, app.chart ? `chart ${app.chart}` : app.path)),
      el("td", {}, app.destination),
      el("td", {}, urlLinks(app.urls)),
      el("td", {}, since(app.lastSync)),
      el("td", { class: "message" }, app.message));
  }

  // One <tr> per app, rebuilt only when that app changes. When the rows shown stay the same, in
  // the same order, a change swaps that one row in place: re-appending a thousand rows costs the
  // browser a layout of the whole table (half a second at 1,000 apps).
  const rows = new Map();
  let shownKeys = [];
  let streamReady = false;  // the first paint waits for the whole list, not a frame per batch
  let scheduled = false;
  let choicesStale = false;
  function render() {
    if (scheduled || !streamReady) return;
    scheduled = true;
    requestAnimationFrame(() => {
      scheduled = false;
      if (choicesStale) { choicesStale = false; refreshChoices(); }
      const shown = [...apps.values()].filter((app) =>
        (!filters.text || app.name.toLowerCase().includes(filters.text))
        && (!filters.sync || app.sync === filters.sync) && (!filters.health || app.health === filters.health)
        && (!filters.namespace || app.namespace === filters.namespace) && (!filters.repo || app.repo === filters.repo))
        .sort((a, b) => (a.namespace + "/" + a.name).localeCompare(b.namespace + "/" + b.name));
      const keys = shown.map((app) => `${app.namespace}/${app.name}`);
      const same = keys.length === shownKeys.length && keys.every((key, i) => key === shownKeys[i]);
      const fragment = same ? null : document.createDocumentFragment();
      shown.forEach((app, i) => {
        let cached = rows.get(keys[i]);
        if (!cached || cached.app !== app) {
          const fresh = { app, tr: row(app) };
          if (same && cached) cached.tr.replaceWith(fresh.tr);
          rows.set(keys[i], fresh);
          cached = fresh;
        }
        if (!same) fragment.append(cached.tr);
      });
      if (!same) fill(body, fragment);
      shownKeys = keys;
      body.dataset.rows = String(shown.length);
      body.dataset.total = String(apps.size);
      count.textContent = `${shown.length} of ${apps.size} applications`;
    });
  }

  const table = el("table", {},
    el("caption", { class: "visually-hidden" }, "Applications"),
    el("thead", {}, el("tr", {}, ...["Name", "Sync", "Health", "Revision", "Repository", "Destination", "URL",
      "Last sync", "Message"].map((title) => el("th", { scope: "col" }, title)))),
    body);
  show(el("h1", {}, "Applications"), bar, count, table);

  stream = new EventSource("/api/v1/stream");
  // Every (re)connection sends every app again, then `ready`: an app not sent again was deleted
  // while the stream was down.
  let resent = new Set();
  stream.addEventListener("open", () => { resent = new Set(); });
  stream.addEventListener("app", (event) => {
    const app = JSON.parse(event.data);
    apps.set(`${app.namespace}/${app.name}`, app);
    resent.add(`${app.namespace}/${app.name}`);
    choicesStale = true;
    render();
  });
  stream.addEventListener("delete", (event) => {
    const app = JSON.parse(event.data);
    apps.delete(`${app.namespace}/${app.name}`);
    rows.delete(`${app.namespace}/${app.name}`);
    choicesStale = true;
    render();
  });
  stream.addEventListener("ready", () => {
    for (const key of [...apps.keys()]) {
      if (!resent.has(key)) { apps.delete(key); rows.delete(key); }
    }
    streamReady = true;
    choicesStale = true;
    render();
  });
}

// ------------------------------------------------------------------------------ one app

function appPage(namespace, name) {
  document.title = `${name} · Gantry`;
  const header = el("section", { "aria-labelledby": "app-title" });
  const problem = el("div", { role: "alert" });
  const tree = el("section", { "aria-labelledby": "tree-title" });
  const historySection = el("section", { "aria-labelledby": "history-title" });
  const base = `/api/v1/applications/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}`;
  let detail = null;

  async function act(what, body, button) {
    button.disabled = true;
    fill(problem);
    try {
      await api(`${base}/${what}`, { method: "POST", body });
      announce(`${what} requested for ${name}`);
    } catch (error) {
      fill(problem, el("p", { class: "alert" }, `${what} failed: ${error.message}`));
    } finally {
      button.disabled = false;
    }
  }

  function renderHeader() {
    const app = detail.summary;
    const facts = el("dl", { class: "facts" },
      el("dt", {}, "Sync"), el("dd", { id: "app-sync" }, state(app.sync), app.shortRevision ? ` at ${app.shortRevision}` : ""),
      el("dt", {}, "Commit"), el("dd", { id: "app-commit" }, app.commitMessage
        ? `${app.commitMessage} (${app.commitAuthor})` : "-"),
      el("dt", {}, "Health"), el("dd", { id: "app-health" }, state(app.health), app.healthMessage ? ` ${app.healthMessage}` : ""),
      el("dt", {}, "Repository"), el("dd", {}, app.chart
        ? `${app.repo} (chart ${app.chart} ${app.revision || app.targetRevision}, from ${app.targetRevision})`
        : `${app.repo} (${app.path} at ${app.targetRevision})`),
      el("dt", {}, "Destination"), el("dd", {}, app.destination),
      el("dt", {}, "URL"), el("dd", {}, urlLinks(app.urls).length ? urlLinks(app.urls) : "-"),
      el("dt", {}, "Sync policy"), el("dd", {}, app.automated ? "Automated" : "Manual"),
      el("dt", {}, "Last sync"), el("dd", {}, app.lastSync ? `${app.lastSync} (${since(app.lastSync)})` : "-"),
      el("dt", {}, "Operation"), el("dd", { id: "app-operation" }, detail.operation
        ? [state("Running"), " sync requested", (detail.operation.sync || {}).revision ? ` to ${detail.operation.sync.revision}` : "",
          ", waiting for the controller"]
        : detail.operationState ? [state(detail.operationState.phase), " ", detail.operationState.message || ""] : "-"));
    const failures = (detail.conditions || []).map((condition) =>
      el("div", { class: "alert", id: "app-error" }, `${condition.type}: ${condition.message}`));
    const actions = el("div", { class: "actions" });
    if (detail.can.refresh) {
      const refresh = el("button", { type: "button", id: "refresh", onclick: () => act("refresh", { hard: false }, refresh) }, "Refresh");
      const hard = el("button", { type: "button", id: "hard-refresh", onclick: () => act("refresh", { hard: true }, hard) }, "Hard refresh");
      actions.append(refresh, hard);
    }
    if (detail.can.sync) {
      const prune = el("input", { type: "checkbox", id: "sync-prune" });
      const revision = el("input", { type: "text", id: "sync-revision", placeholder: "revision (default: the app's)", size: 24 });
      const sync = el("button", {
        type: "button", id: "sync", class: "primary",
        onclick: () => act("sync", { prune: prune.checked, revision: revision.value.trim() }, sync),
      }, "Sync");
      actions.append(sync, el("label", { for: "sync-prune" }, prune, " prune"),
        el("label", { for: "sync-revision", class: "visually-hidden" }, "Revision to sync"), revision);
    }
    const dryRun = el("button", { type: "button", id: "dry-run", onclick: () => showPlan(dryRun) }, "Diff (dry run)");
    actions.append(dryRun);
    if (detail.can.delete) actions.append(deleteControl());
    if (!detail.can.refresh && !detail.can.sync) actions.append(el("span", { class: "note" }, "You may look at this app, not act on it."));
    fill(header, el("h1", { id: "app-title" }, name, el("span", { class: "note" }, ` in ${namespace}`)),
      facts, ...failures, actions, problem);
  }

  let view = "tree";
  let sortKey = "kind";
  let sortUp = true;
  let lastTree = null;

  function nodeButton(node) {
    return el("button", { type: "button", class: "node", "data-kind": node.kind, "data-name": node.name,
      onclick: () => showResource(node) },
    el("span", { class: "kind" }, node.kind), el("span", { class: "name" }, node.name),
    node.sync ? state(node.sync) : null, node.health ? state(node.health) : null,
    node.message ? el("span", { class: "msg" }, node.message) : null);
  }

  function troubled(node) {
    return (node.sync && node.sync !== "Synced") || (node.health && !["Healthy", ""].includes(node.health));
  }

  function renderTree(data) {
    lastTree = data;
    const children = new Map();
    for (const node of data.nodes) {
      const key = node.parent || "";
      if (!children.has(key)) children.set(key, []);
      children.get(key).push(node);
    }
    function item(node) {
      const below = branch(node.id);
      const box = nodeButton(node);
      if (!below) return el("li", {}, box);
      // A toggle of its own beside the node: a button inside a <summary> would nest two controls.
      const toggle = el("button", {
        type: "button", class: "toggle", "aria-expanded": "true", "aria-label": `${node.kind} ${node.name}: hide what it made`,
        onclick: () => {
          const open = toggle.getAttribute("aria-expanded") !== "true";
          toggle.setAttribute("aria-expanded", String(open));
          toggle.setAttribute("aria-label", `${node.kind} ${node.name}: ${open ? "hide" : "show"} what it made`);
          toggle.textContent = open ? "▾" : "▸";
          below.hidden = !open;
        },
      }, "▾");
      return el("li", {}, toggle, box, below);
    }
    function branch(parent) {
      const nodes = children.get(parent) || [];
      if (!nodes.length) return null;
      return el("ul", { class: parent ? "" : "tree" }, nodes.map(item));
    }
    const top = children.get("") || [];
    let body;
    if (!top.length) body = el("p", { class: "note" }, "No resources yet.");
    else if (top.length <= 100) body = branch("");
    else {
      // A large app: one folded group per kind, built only when opened (the page stays fast with
      // thousands of resources); groups with something out of sync or unhealthy start open.
      const kinds = new Map();
      for (const node of top) {
        if (!kinds.has(node.kind)) kinds.set(node.kind, []);
        kinds.get(node.kind).push(node);
      }
      body = el("ul", { class: "tree groups" }, [...kinds.entries()].sort().map(([kind, nodes]) => {
        const bad = nodes.filter(troubled).length;
        const list = el("ul", {});
        const group = el("details", { "data-group": kind },
          el("summary", {}, `${kind} (${nodes.length})${bad ? `, ${bad} out of sync or unhealthy` : ""}`), list);
        const build = () => { if (!list.childElementCount) fill(list, ...nodes.map(item)); };
        group.addEventListener("toggle", () => { if (group.open) build(); });
        if (bad || nodes.length <= 20) { group.open = true; build(); }
        return el("li", {}, group);
      }));
    }
    const hidden = data.hidden.length ? el("p", { class: "note" }, `Not shown (no permission to list): ${data.hidden.join(", ")}`) : null;
    fill(tree, el("h2", { id: "tree-title" }, "Resources"), viewSwitch(), view === "tree" ? body : resourceTable(data.nodes), hidden);
  }

  function viewSwitch() {
    const choose = (mode) => () => { view = mode; renderTree(lastTree); };
    return el("div", { class: "actions", role: "group", "aria-label": "Show resources as" },
      el("button", { type: "button", id: "view-tree", "aria-pressed": String(view === "tree"), onclick: choose("tree") }, "Tree"),
      el("button", { type: "button", id: "view-list", "aria-pressed": String(view === "list"), onclick: choose("list") }, "List"));
  }

  function resourceTable(nodes) {
    const columns = [["kind", "Kind"], ["namespace", "Namespace"], ["name", "Name"], ["sync", "Sync"], ["health", "Health"], ["message", "Message"]];
    const sorted = [...nodes].sort((a, b) => (String(a[sortKey] || "").localeCompare(String(b[sortKey] || ""))
      || a.name.localeCompare(b.name)) * (sortUp ? 1 : -1));
    const header = columns.map(([key, title]) => el("th", { scope: "col", "aria-sort": key === sortKey ? (sortUp ? "ascending" : "descending") : "none" },
      el("button", { type: "button", class: "sort", onclick: () => {
        sortUp = key === sortKey ? !sortUp : true;
        sortKey = key;
        renderTree(lastTree);
      } }, title, key === sortKey ? (sortUp ? " ▲" : " ▼") : "")));
    const rows = sorted.slice(0, 2000).map((node) => el("tr", { "data-node": node.id },
      el("td", {}, node.kind), el("td", {}, node.namespace), el("td", {}, el("button", { type: "button", class: "link-like", onclick: () => showResource(node) }, node.name)),
      el("td", {}, node.sync ? state(node.sync) : ""), el("td", {}, node.health ? state(node.health) : ""), el("td", { class: "message" }, node.message)));
    return el("table", { id: "resource-table" }, el("thead", {}, el("tr", {}, header)), el("tbody", {}, rows));
  }

  function renderHistory() {
    const canRollback = detail.can.sync && !detail.summary.automated;
    const rows = [...(detail.history || [])].reverse().map((entry) => {
      const rollback = el("button", {
        type: "button", "data-rollback": String(entry.id),
        onclick: () => {
          if (confirm(`Roll ${name} back to ${(entry.revision || "").slice(0, 7)} (history ${entry.id})?`)) {
            act("rollback", { id: entry.id }, rollback);
          }
        },
      }, "Rollback");
      const by = entry.initiatedBy || {};
      const meta = entry.revisionMetadata || {};
      return el("tr", { "data-history": String(entry.id) }, el("td", {}, String(entry.id)), el("td", {}, entry.deployedAt || ""),
        el("td", {}, el("code", {}, (entry.revision || "").slice(0, 7))),
        el("td", {}, meta.message || "", meta.author ? el("div", { class: "note" }, meta.author) : null),
        el("td", {}, by.username || (by.automated ? "automated sync" : "by hand")),
        el("td", {}, canRollback ? rollback : ""));
    });
    const note = detail.can.sync && detail.summary.automated
      ? el("p", { class: "note" }, "Rollback needs automated sync off: it would undo the rollback (as in Argo CD).") : null;
    fill(historySection, el("h2", { id: "history-title" }, "History"), note, rows.length
      ? el("table", {}, el("thead", {}, el("tr", {}, ["ID", "Deployed", "Revision", "Commit", "Started by", "Action"].map((t) => el("th", { scope: "col" }, t)))),
        el("tbody", {}, rows))
      : el("p", { class: "note" }, "No sync yet."));
  }

  const resourceSection = el("section", { "aria-labelledby": "resource-title", id: "resource" });
  let logStream = null;

  async function showResource(node) {
    if (logStream) { logStream.abort(); logStream = null; }
    const query = new URLSearchParams({ group: node.group, kind: node.kind, namespace: node.namespace, name: node.name });
    fill(resourceSection, el("h2", { id: "resource-title", tabindex: "-1" }, `${node.kind} ${node.name}`),
      el("p", { class: "note" }, "Loading…"));
    resourceSection.querySelector("h2").focus();
    let data;
    let diff = null;
    try {
      [data, diff] = await Promise.all([api(`${base}/resource?${query}`),
        api(`${base}/diff?${query}`).catch((error) => ({ error: error.message }))]);
    } catch (error) {
      fill(resourceSection, el("h2", { id: "resource-title" }, `${node.kind} ${node.name}`),
        el("p", { class: "alert" }, error.message));
      return;
    }
    const parts = [el("h2", { id: "resource-title", tabindex: "-1" }, `${node.kind} ${node.name}`)];
    let desired = el("p", { class: "note", id: "resource-desired" }, "Not from git: made by a controller.");
    if (diff.error) {
      parts.push(el("p", { class: "alert" }, `diff: ${diff.error}`));
      desired = el("p", { class: "note", id: "resource-desired" }, "Not known: the diff could not be computed.");
    } else {
      const [mine] = diff.resources;
      parts.push(el("h3", {}, "Diff (git → live)"), mine
        ? el("pre", { class: "diff", id: "resource-diff", tabindex: "0", "aria-label": "Diff" }, mine.diff)
        : el("p", { class: "note", id: "resource-diff" }, diff.desired ? "In sync with git." : "Not from git: made by a controller."),
      ...diff.failures.map((f) => el("p", { class: "alert" }, failureText(f))));
      if (diff.desired) {
        desired = el("pre", { class: "manifest", id: "resource-desired", tabindex: "0", "aria-label": "Desired manifest" },
          JSON.stringify(diff.desired, null, 2));
      } else if (mine && mine.action === "prune") {
        desired = el("p", { class: "note", id: "resource-desired" }, "Not in git any more: a sync with prune deletes it.");
      }
    }
    parts.push(el("div", { class: "manifests" },
      el("div", {}, el("h3", {}, `Desired manifest (git at ${diff.revision ? diff.revision.slice(0, 7) : "?"})`), desired),
      el("div", {}, el("h3", {}, "Live manifest"), el("pre", { class: "manifest", id: "resource-live", tabindex: "0", "aria-label": "Live manifest" },
        data.live ? JSON.stringify(data.live, null, 2) : "(not in the cluster)"))));
    parts.push(el("h3", {}, "Events"), data.events.length
      ? el("ul", { id: "resource-events" }, data.events.map((e) => el("li", {}, `${e.type} ${e.reason}: ${e.message}${e.count > 1 ? ` (×${e.count})` : ""}`)))
      : el("p", { class: "note" }, "No events."));
    if (node.kind === "Pod" && data.live) parts.push(logsPanel(node, data.live));
    fill(resourceSection, ...parts);
  }

  function logsPanel(node, pod) {
    const containers = ((pod.spec || {}).containers || []).map((c) => c.name);
    const container = el("select", { id: "log-container" }, containers.map((c) => el("option", { value: c }, c)));
    const tail = el("input", { id: "log-tail", type: "number", min: "1", max: "10000", value: "200", size: 6 });
    const previous = el("input", { id: "log-previous", type: "checkbox" });
    const follow = el("input", { id: "log-follow", type: "checkbox" });
    const output = el("pre", { class: "logs", id: "log-output", tabindex: "0", "aria-label": "Log" });
    async function load() {
      if (logStream) logStream.abort();
      logStream = new AbortController();
      output.textContent = "";
      const query = new URLSearchParams({ namespace: node.namespace, pod: node.name, container: container.value,
        tailLines: tail.value || "200", previous: previous.checked ? "1" : "", follow: follow.checked ? "1" : "" });
      try {
        const response = await fetch(`${base}/logs?${query}`, { signal: logStream.signal, credentials: "same-origin" });
        if (!response.ok) {
          const data = await response.json().catch(() => ({}));
          output.textContent = data.error || `${response.status} ${response.statusText}`;
          return;
        }
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          output.textContent += decoder.decode(value, { stream: true });
          output.scrollTop = output.scrollHeight;
        }
      } catch (error) {
        if (error.name !== "AbortError") output.textContent += `\n(${error.message})`;
      }
    }
    const show = el("button", { type: "button", id: "log-show", onclick: load }, "Show log");
    const controls = el("div", { class: "actions" },
      el("label", { for: "log-container" }, "Container ", container),
      el("label", { for: "log-tail" }, "Last lines ", tail),
      el("label", { for: "log-previous" }, previous, " previous container"),
      el("label", { for: "log-follow" }, follow, " follow"), show);
    setTimeout(load, 0);
    return el("section", { "aria-labelledby": "logs-title" }, el("h3", { id: "logs-title" }, "Logs"), controls, output);
  }

  const planSection = el("section", { "aria-labelledby": "plan-title", id: "plan" });

  // The timeline: built once, its list refilled (a refresh keeps the focus on its button). It is
  // read again whenever the app changes (the page's stream) and when asked, never on a timer.
  const eventsStatus = el("p", { class: "note", id: "events-status", "aria-live": "polite" }, "Loading…");
  const eventsList = el("div", { id: "events-list" });
  const eventsRefresh = el("button", { type: "button", id: "events-refresh", onclick: () => loadEvents() }, "Refresh events");
  const eventsSection = el("section", { "aria-labelledby": "events-title", id: "events" },
    el("h2", { id: "events-title" }, "Events"), el("div", { class: "actions" }, eventsRefresh), eventsStatus, eventsList);
  let eventsLoading = null;

  async function loadEvents() {
    if (eventsLoading) { eventsLoading.again = true; return; }
    eventsLoading = { again: false };
    try {
      renderEvents(await api(`${base}/events`));
    } catch (error) {
      fill(eventsList, el("p", { class: "alert" }, `events: ${error.message}`));
      eventsStatus.textContent = "";
    } finally {
      const again = eventsLoading.again;
      eventsLoading = null;
      if (again) loadEvents();
    }
  }

  function renderEvents(data) {
    const rows = data.items.map((e) => el("tr", { "data-event-type": e.type, "data-object": `${e.kind}/${e.name}` },
      el("td", {}, el("time", { datetime: e.time }, e.time.replace("T", " ").replace(/\.\d+/, "")),
        el("div", { class: "note" }, since(e.time))),
      el("td", {}, state(e.type)),
      el("td", {}, e.reason),
      el("td", {}, `${e.kind}/${e.name}`, e.namespace ? el("div", { class: "note" }, e.namespace) : null),
      el("td", { class: "message" }, e.message, e.count > 1 ? el("span", { class: "note" }, ` (×${e.count})`) : null)));
    const hidden = data.hidden.length ? el("p", { class: "note" }, `Not shown (no permission to list): ${data.hidden.join(", ")}`) : null;
    eventsStatus.textContent = data.total > data.items.length
      ? `The newest ${data.items.length} of ${data.total} events, newest first.`
      : `${data.total} event${data.total === 1 ? "" : "s"}, newest first.`;
    fill(eventsList, rows.length
      ? el("table", { id: "events-table" }, el("caption", { class: "visually-hidden" }, "Events of the app and its resources"),
        el("thead", {}, el("tr", {}, ["Time", "Type", "Reason", "Object", "Message"].map((t) => el("th", { scope: "col" }, t)))),
        el("tbody", {}, rows))
      : null, hidden);
  }

  async function showPlan(button) {
    button.disabled = true;
    fill(planSection, el("h2", { id: "plan-title" }, "What a sync would change"), el("p", { class: "note" }, "Computing…"));
    try {
      const plan = await api(`${base}/diff`);
      const items = plan.resources.map((r) => el("li", { "data-plan": `${r.kind}/${r.name}` },
        el("details", {}, el("summary", {}, `${r.action} ${r.kind} ${r.namespace ? r.namespace + "/" : ""}${r.name}`),
          el("pre", { class: "diff", tabindex: "0" }, r.diff))));
      fill(planSection, el("h2", { id: "plan-title" }, `What a sync to ${plan.revision.slice(0, 7)} would change`),
        items.length ? el("ul", { id: "plan-list" }, items) : el("p", { class: "note", id: "plan-list" }, "Nothing: the cluster is as git says."),
        ...plan.failures.map((f) => el("p", { class: "alert" }, failureText(f))));
    } catch (error) {
      fill(planSection, el("h2", { id: "plan-title" }, "What a sync would change"), el("p", { class: "alert" }, error.message));
    } finally {
      button.disabled = false;
    }
  }

  function deleteControl() {
    const typed = el("input", { type: "text", id: "delete-confirm", autocomplete: "off", size: 20 });
    const cascade = el("input", { type: "checkbox", id: "delete-cascade", checked: true });
    const problemHere = el("div", { role: "alert" });
    const confirmButton = el("button", {
      type: "submit", id: "delete-confirm-button", class: "danger",
    }, "Delete");
    const dialog = el("dialog", { id: "delete-dialog", "aria-labelledby": "delete-title" },
      el("form", {
        method: "dialog",
        onsubmit: async (event) => {
          event.preventDefault();
          if (typed.value !== name) { fill(problemHere, el("p", { class: "alert" }, `Type ${name} to confirm.`)); return; }
          try {
            await api(`${base}/delete`, { method: "POST", body: { confirm: typed.value, cascade: cascade.checked } });
            dialog.close();
            announce(`${name} deleted`);
            go("/");
          } catch (error) {
            fill(problemHere, el("p", { class: "alert" }, error.message));
          }
        },
      },
      el("h2", { id: "delete-title" }, `Delete ${name}?`),
      el("p", {}, "Type the app's name to confirm."),
      el("label", { for: "delete-confirm" }, "Application name ", typed),
      el("p", {}, el("label", { for: "delete-cascade" }, cascade, " also delete the resources it deployed (cascade)")),
      problemHere,
      el("div", { class: "actions" }, confirmButton,
        el("button", { type: "button", onclick: () => dialog.close() }, "Cancel"))));
    const open = el("button", { type: "button", id: "delete", onclick: () => { document.body.append(dialog); dialog.showModal(); typed.focus(); } }, "Delete…");
    return open;
  }

  let loading = null;
  async function load() {
    if (loading) { loading.again = true; return; }
    loading = { again: false };
    try {
      const [fresh, treeData] = await Promise.all([api(base), api(`${base}/tree`)]);
      detail = fresh;
      renderHeader();
      renderTree(treeData);
      renderHistory();
      loadEvents();
    } catch (error) {
      show(el("h1", {}, name), el("p", { class: "alert" }, error.message), link("/", "All applications"));
    } finally {
      const again = loading.again;
      loading = null;
      if (again) load();
    }
  }

  show(el("p", {}, link("/", "← All applications")), header, planSection, tree, resourceSection, eventsSection, historySection);
  load();
  stream = new EventSource(`/api/v1/stream?${new URLSearchParams({ namespace, name })}`);
  let deleted = false;
  stream.addEventListener("app", (event) => {
    const app = JSON.parse(event.data);
    if (app.namespace === namespace && app.name === name && detail && !deleted) load();
  });
  stream.addEventListener("delete", () => {
    deleted = true;  // nothing more to load: say so once, keep what was shown
    fill(problem, el("p", { class: "alert", id: "app-deleted" }, `${name} was deleted.`));
  });
}

// ------------------------------------------------------------------------------ routing

async function route() {
  if (stream) { stream.close(); stream = null; }
  if (!session) {
    try { await loadSession(); } catch (error) { show(el("p", { class: "alert" }, error.message)); return; }
  }
  const path = location.pathname;
  if (!session.user && path !== "/login") { go("/login"); return; }
  const match = path.match(/^\/apps\/([^/]+)\/([^/]+)$/);
  if (path === "/login") loginPage();
  else if (match) appPage(decodeURIComponent(match[1]), decodeURIComponent(match[2]));
  else listPage();
  document.getElementById("main").focus({ preventScroll: true });
}

window.addEventListener("popstate", route);
route();
