// Field page: connection state and data age, and actions sent to the JSON API through a
// queue kept in localStorage, each with its own Idempotency-Key, so an action taken offline is
// sent once the connection is back and is applied once however often it is sent.
"use strict";
(function () {
  var QUEUE = "gw-field-queue";
  var conn = document.getElementById("conn");
  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var generated = conn && conn.dataset.generated ? new Date(conn.dataset.generated) : new Date();
  var lastError = null;

  function age() {
    var s = Math.max(0, Math.round((Date.now() - generated.getTime()) / 1000));
    if (s < 60) return "just now";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " days ago";
  }
  function load() {
    try { return JSON.parse(localStorage.getItem(QUEUE) || "[]"); } catch (e) { return []; }
  }
  function save(q) { localStorage.setItem(QUEUE, JSON.stringify(q)); }
  function showState() {
    if (!conn) return;
    var q = load(), online = navigator.onLine && !lastError;
    var text = (online ? "Online" : "Offline: showing saved data") + " · data as of " + age();
    if (q.length) text += " · " + q.length + " action" + (q.length > 1 ? "s" : "") + " waiting to send";
    if (lastError === "session") text += " · session expired: log in again to send them";
    conn.textContent = text;
    conn.className = online ? "" : "offline";
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

  var flushing = false;
  function flush() {
    if (flushing) return Promise.resolve();
    var q = load();
    if (!q.length) { showState(); return Promise.resolve(); }
    if (!navigator.onLine) { lastError = "network"; showState(); return Promise.resolve(); }
    flushing = true;
    var entry = q[0];
    return fetch(entry.url, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Idempotency-Key": entry.key,
                 "X-CSRF-Token": entry.csrf },
      body: JSON.stringify(entry.body)
    }).then(function (r) {
      flushing = false;
      if (r.status === 401 || r.status === 403 && !entry.sentOnce) {
        lastError = r.status === 401 ? "session" : null;
        if (r.status === 403) { save(load().slice(1)); report(entry, entry.label + ": not allowed for your role"); }
        showState(); return;
      }
      if (r.status === 409 || r.status === 429 || r.status >= 500) { lastError = null; showState(); return; }
      lastError = null;
      save(load().filter(function (e) { return e.key !== entry.key; }));
      return r.json().catch(function () { return {}; }).then(function (body) {
        report(entry, entry.label + (r.ok ? ": done" : ": refused (" + (body.detail || r.status) + ")"));
        showState();
        if (r.ok && !load().length) setTimeout(function () { location.reload(); }, 800);
        return flush();
      });
    }, function () { flushing = false; lastError = "network"; showState(); });
  }

  function bodyOf(form) {
    var data = {};
    Array.prototype.forEach.call(form.elements, function (el) {
      if (el.name && el.type !== "submit") data[el.name] = el.value;
    });
    if (form.dataset.kind === "read") {
      data.value = Number(data.value);
      data.read_at = new Date().toISOString();
    }
    return data;
  }

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!form.dataset || !form.dataset.api) return;
    ev.preventDefault();
    var submitter = ev.submitter;
    var url = submitter && submitter.dataset.api ? submitter.dataset.api : form.dataset.api;
    var label = (submitter && submitter.textContent.trim()) || form.dataset.label;
    var entry = { url: url, key: newKey(), body: bodyOf(form), label: label,
                  csrf: csrfMeta ? csrfMeta.content : "" };
    form.dataset.entry = entry.key;
    var q = load(); q.push(entry); save(q);
    report(entry, label + ": queued, sending…");
    flush();
  });
  window.addEventListener("online", function () { lastError = null; flush(); });
  window.addEventListener("offline", function () { lastError = "network"; showState(); });
  setInterval(function () { if (load().length) flush(); else showState(); }, 15000);
  showState();
  flush();
})();
