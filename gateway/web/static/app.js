// Field page: connection state and data age, actions sent to the JSON API through a queue
// kept in localStorage, each with its own Idempotency-Key, so an action taken offline is sent
// once the connection is back and is applied once however often it is sent; and the service
// worker (/field/sw.js) that keeps the pages opened for use without a connection.
"use strict";
(function () {
  var QUEUE = "gw-field-queue";
  var PAGES = "gw-field-pages";
  var conn = document.getElementById("conn");
  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var userMeta = document.querySelector('meta[name="field-user"]');
  var user = userMeta ? userMeta.content : null;
  var generated = conn && conn.dataset.generated ? new Date(conn.dataset.generated) : null;
  var saved = conn ? conn.dataset.saved : null;
  var lastError = saved ? "network" : null;
  var controlledAtLoad = !!(navigator.serviceWorker && navigator.serviceWorker.controller);

  function age() {
    var s = Math.max(0, Math.round((Date.now() - generated.getTime()) / 1000));
    if (s < 60) return "just now";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " days ago";
  }
  function asOf() {
    var when = generated.toLocaleString("en-GB", { day: "numeric", month: "short",
                                                   hour: "2-digit", minute: "2-digit" });
    return "data as of " + when + " (" + age() + ")";
  }
  function load() {
    try { return JSON.parse(localStorage.getItem(QUEUE) || "[]"); } catch (e) { return []; }
  }
  function save(q) { localStorage.setItem(QUEUE, JSON.stringify(q)); }
  function mine(q) { return q.filter(function (e) { return e.user === user; }); }
  function showState() {
    if (!conn) return;
    var q = mine(load()), online = navigator.onLine && !lastError;
    var parts = [];
    if (saved === "logged-out") {
      parts.push("Logged out on this phone: the pages saved on it were removed");
    } else if (saved && !generated) {
      parts.push(online ? "Connection back" : "Offline: this page was not saved on this phone");
    } else if (saved) {
      parts.push((online ? "Connection back: reload for current data" : "Offline")
                 + " · saved copy of this page");
    } else {
      parts.push(online ? "Online" : "Offline: showing saved data");
    }
    if (generated) parts.push(asOf());
    if (q.length) parts.push(q.length + " action" + (q.length > 1 ? "s" : "") + " waiting to send");
    if (lastError === "session") parts.push("session expired: log in again to send them");
    conn.textContent = parts.join(" · ");
    conn.className = online && !saved ? "" : "offline";
  }
  function newKey() {
    var b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return Array.prototype.map.call(b, function (x) { return ("0" + x.toString(16)).slice(-2); }).join("");
  }
  function report(entry, text) {
    var form = document.querySelector('[data-entry="' + entry.key + '"]');
    var out = form && form.querySelector(".result");
    if (out) out.textContent = text;
  }
  function drop(entry) { save(load().filter(function (e) { return e.key !== entry.key; })); }

  // Entries are sent by a page of the person who queued them, with that page's CSRF token (a
  // new login has a new one); another person's entries wait for them.
  var flushing = false;
  function flush() {
    if (flushing) return Promise.resolve();
    var q = mine(load());
    if (!q.length || !csrfMeta) { showState(); return Promise.resolve(); }
    if (!navigator.onLine) { lastError = "network"; showState(); return Promise.resolve(); }
    flushing = true;
    var entry = q[0];
    return fetch(entry.url, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Idempotency-Key": entry.key,
                 "X-CSRF-Token": csrfMeta.content },
      body: JSON.stringify(entry.body)
    }).then(function (r) {
      flushing = false;
      if (r.status === 401) { lastError = "session"; showState(); return; }
      if (r.status === 403) {
        lastError = null; drop(entry);
        report(entry, entry.label + ": not allowed for your role"); showState(); return flush();
      }
      if (r.status === 429 || r.status >= 500) { lastError = null; showState(); return; }
      lastError = null;
      return r.json().catch(function () { return {}; }).then(function (body) {
        // The first request with this key still runs: try again later.
        if (r.status === 409 && body.error && body.error.code === "in_progress") {
          showState(); return;
        }
        drop(entry);
        var why = body.error ? body.error.message : r.status;
        report(entry, entry.label + (r.ok ? ": done" : ": refused (" + why + ")"));
        showState();
        if (r.ok && !mine(load()).length) setTimeout(function () { location.reload(); }, 800);
        return flush();
      });
    }, function () { flushing = false; lastError = "network"; showState(); });
  }

  function bodyOf(form, submitter) {
    var data = {};
    Array.prototype.forEach.call(form.elements, function (el) {
      if (el.name && el.type !== "submit") data[el.name] = el.value;
    });
    if (submitter && submitter.name) data[submitter.name] = submitter.value;
    if (form.dataset.kind === "read") {
      data.value = Number(data.value);
      data.read_at = new Date().toISOString();
    }
    return data;
  }

  function clearSaved() {
    if (!window.caches) return Promise.resolve();
    return caches.delete(PAGES).catch(function () { return false; });
  }

  // Logging out leaves nothing of this person's on the phone: the saved pages and the actions
  // not sent yet (after a warning) go; the service worker also clears the pages itself.
  function logout(form) {
    var q = load();
    if (q.length && !window.confirm(q.length + " action" + (q.length > 1 ? "s have" : " has")
        + " not been sent yet and will be lost. Log out anyway?")) return;
    localStorage.removeItem(QUEUE);
    clearSaved().then(function () { form.submit(); });
  }

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (form.getAttribute && form.getAttribute("action") === "/field/logout") {
      ev.preventDefault();
      logout(form);
      return;
    }
    if (!form.dataset || !form.dataset.api) return;
    ev.preventDefault();
    var submitter = ev.submitter;
    var url = submitter && submitter.dataset.api ? submitter.dataset.api : form.dataset.api;
    var label = (submitter && submitter.textContent.trim()) || form.dataset.label;
    var entry = { url: url, key: newKey(), body: bodyOf(form, submitter), label: label, user: user };
    form.dataset.entry = entry.key;
    var q = load(); q.push(entry); save(q);
    report(entry, label + ": queued, sending…");
    flush();
  });

  // The offline page lists the pages saved on this phone.
  function listSaved() {
    var list = document.getElementById("saved-pages");
    if (!list || !window.caches) return;
    caches.open(PAGES).then(function (cache) { return cache.keys(); }).then(function (keys) {
      list.textContent = "";
      keys.forEach(function (request) {
        var url = new URL(request.url), label = null, m;
        if (url.pathname === "/field/") label = "Work list";
        else if ((m = url.pathname.match(/^\/field\/meters\/([^/]+)$/))) label = "Meter " + decodeURIComponent(m[1]);
        else if (url.pathname === "/field/search") label = "Search: " + (url.searchParams.get("q") || "");
        if (!label) return;
        if (url.search && url.pathname !== "/field/search") label += " (" + url.search.slice(1) + ")";
        var li = document.createElement("li"), a = document.createElement("a");
        a.href = url.pathname + url.search; a.textContent = label;
        li.appendChild(a); list.appendChild(li);
      });
      if (!list.children.length) {
        var li = document.createElement("li");
        li.textContent = "No pages are saved on this phone.";
        list.appendChild(li);
      }
    });
  }

  function registerWorker() {
    // A saved copy came from the worker: it is there, and the network may not be.
    if (!("serviceWorker" in navigator) || saved) return;
    navigator.serviceWorker.register("/field/sw.js", { scope: "/field/" }).then(function () {
      return navigator.serviceWorker.ready;
    }).then(function (reg) {
      // This page came before the worker: ask it to keep a copy now.
      if (!controlledAtLoad && user && !saved && reg.active) {
        reg.active.postMessage({ keep: location.href });
      }
    }).catch(function () { /* no worker: the page works online as before */ });
  }

  window.addEventListener("online", function () { lastError = null; flush(); });
  window.addEventListener("offline", function () { lastError = "network"; showState(); });
  setInterval(function () { if (mine(load()).length) flush(); else showState(); }, 15000);
  showState();
  listSaved();
  registerWorker();
  flush();
})();
