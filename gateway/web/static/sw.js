// Field page service worker (served as /field/sw.js, scope /field/).
//
// Pages a technician has opened (work list, meter cards, searches) are kept in the Cache API
// as they arrive from the network, so that they open again without a connection: network
// first, the saved copy when the network fails (or does not answer within a few seconds),
// marked as a saved copy so that the page's script says so, with its data's age. A page never
// opened gets the offline page instead of the browser's error page. The saved pages hold
// personal data: they are deleted at logout (online or not), and whenever the server answers
// with the login page (no session any more). Nothing is sent or kept for other requests: the
// API calls of the action queue go straight to the network.
"use strict";

const SHELL = "gw-field-shell-v1"; // the offline page, script and styles: no personal data
const PAGES = "gw-field-pages"; // the pages opened: personal data
const PENDING = "gw-field-pending"; // a logout made offline, sent when the network is back
const SHELL_URLS = ["/field/offline", "/field/static/app.css", "/field/static/app.js"];
const LOGOUT = "/field/logout";
const PAGE_TIMEOUT_MS = 6000;
const MAX_PAGES = 80;

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches.open(SHELL).then((cache) => cache.addAll(SHELL_URLS)).then(() => self.skipWaiting())
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches.keys()
      .then((keys) => Promise.all(
        keys.filter((k) => k.startsWith("gw-field-shell-") && k !== SHELL)
          .map((k) => caches.delete(k))))
      .then(() => self.clients.claim())
  );
});

// A page opened before this worker controlled it asks for its own copy to be kept.
self.addEventListener("message", (event) => {
  const data = event.data || {};
  if (data.keep && isPage(new URL(data.keep, self.location.origin))) {
    event.waitUntil(fetch(data.keep, { credentials: "same-origin", redirect: "manual" })
      .then(keepPage).catch(() => undefined));
  }
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin || !url.pathname.startsWith("/field/")) return;
  if (request.method === "POST" && url.pathname === LOGOUT) {
    event.respondWith(logout(request));
    return;
  }
  if (request.method !== "GET" || url.pathname === "/field/sw.js") return;
  if (url.pathname.startsWith("/field/static/") || url.pathname === "/field/offline") {
    event.respondWith(shell(request));
  } else if (isPage(url)) {
    event.respondWith(page(request));
  } else if (url.pathname === "/field/login") {
    event.respondWith(loginPage(request));
  }
});

function isPage(url) {
  return url.pathname === "/field/" || url.pathname === "/field/search"
    || url.pathname.startsWith("/field/meters/");
}

function isLogin(response) {
  // Navigations follow redirects by hand: a redirect to the login page is opaque.
  return response.type === "opaqueredirect"
    || new URL(response.url || self.location.href).pathname === "/field/login";
}

async function clearPages() {
  await caches.delete(PAGES);
}

async function keepPage(response) {
  if (isLogin(response)) {
    await clearPages();
    return;
  }
  if (!response.ok || response.type !== "basic" || response.redirected) return;
  const cache = await caches.open(PAGES);
  // Delete first so that the keys stay in the order pages were last fetched.
  await cache.delete(response.url);
  await cache.put(response.url, response);
  const keys = await cache.keys();
  await Promise.all(keys.slice(0, Math.max(0, keys.length - MAX_PAGES)).map((k) => cache.delete(k)));
}

async function marked(response, reason) {
  // The page's script reads data-saved on the status line: "saved copy, data as of …".
  const html = (await response.text()).replace(
    'id="conn"', `id="conn" data-saved="${reason}"`);
  return new Response(html, {
    status: 200, headers: { "Content-Type": "text/html; charset=utf-8" },
  });
}

async function offlinePage(reason) {
  const cached = await caches.match("/field/offline", { cacheName: SHELL });
  if (cached) return marked(cached, reason);
  return new Response("<!doctype html><html lang=\"en\"><title>Offline</title>"
    + "<main><h1>Offline</h1><p>No connection.</p></main></html>",
  { status: 503, headers: { "Content-Type": "text/html; charset=utf-8" } });
}

async function page(request) {
  await sendPendingLogout();
  const network = fetch(request);
  const kept = network.then(async (response) => {
    await keepPage(response.clone());
    return response;
  });
  kept.catch(() => undefined);
  const timeout = new Promise((resolve) => setTimeout(() => resolve(null), PAGE_TIMEOUT_MS));
  try {
    const first = await Promise.race([kept, timeout]);
    if (first) return first;
    const saved = await caches.match(request, { cacheName: PAGES });
    return saved ? marked(saved, "slow") : await kept;
  } catch (err) {
    const saved = await caches.match(request, { cacheName: PAGES });
    return saved ? marked(saved, "offline") : offlinePage("offline");
  }
}

async function loginPage(request) {
  try {
    const response = await fetch(request);
    await clearPages();
    return response;
  } catch (err) {
    return offlinePage("offline");
  }
}

async function shell(request) {
  try {
    const response = await fetch(request);
    if (response.ok) {
      const cache = await caches.open(SHELL);
      await cache.put(request, response.clone());
    }
    return response;
  } catch (err) {
    const cached = await caches.match(request, { cacheName: SHELL });
    return cached || Response.error();
  }
}

async function logout(request) {
  const body = await request.clone().text();
  await clearPages();
  try {
    return await fetch(request);
  } catch (err) {
    // The session cookie is HttpOnly: only the server can end the session. Send the logout
    // as soon as the network is back, before any page is fetched.
    const pending = await caches.open(PENDING);
    await pending.put(LOGOUT, new Response(body));
    return offlinePage("logged-out");
  }
}

async function sendPendingLogout() {
  const pending = await caches.open(PENDING);
  const saved = await pending.match(LOGOUT);
  if (!saved) return;
  try {
    await fetch(LOGOUT, {
      method: "POST", credentials: "same-origin", redirect: "manual",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: await saved.text(),
    });
    await pending.delete(LOGOUT);
  } catch (err) {
    // Still offline: try again with the next page.
  }
}
