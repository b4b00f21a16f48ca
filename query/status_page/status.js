/* The status page of userstatus-query: shows users as online / away / offline, live.
 *
 * Everything goes through the public HTTP API of this same service, with the API key the user
 * types in:
 *   - POST api/watch_user_status (Server-Sent Events) when the service offers it: one "status"
 *     event per user, then a "change" event per transition. EventSource can neither POST nor send
 *     the X-API-Key header, so the stream is read with fetch() and parsed here.
 *   - otherwise (any answer but 200 text/event-stream) POST api/get_user_status every 2 seconds,
 *     deriving the status from the times as the service's status changes do.
 *   - POST api/update_user_status for the "Mark active" buttons.
 *
 * The API key lives in the variable apiKey, and in this tab's sessionStorage only when the user
 * asks for it; never in localStorage nor in a cookie. Text that comes from the API (user ids, state
 * strings) is only ever put into the page as textContent, never as markup. */
"use strict";

(function () {
  /* Status derivation when no status is pushed: the service's changes.offline_after and
   * changes.away_after, from status/settings.json; until it answers, their defaults. Seconds. */
  let offlineAfterS = 60;
  let awayAfterS = 5 * 60;
  const POLL_INTERVAL_MS = 2000;
  const RECONNECT_MS = 2000; /* Pause before opening a watch stream again after it ended. */
  const RECONNECT_MAX_MS = 30000; /* The pause doubles up to this while the service is unreachable. */
  const WATCH_IDLE_MS = 45000; /* 3 keep-alive intervals (15 s) without a byte: the stream is dead. */
  const TICK_MS = 1000; /* Relative times ("3 min ago") are redrawn this often. */
  const CLOCK_SKEW_MIN_MS = 2000; /* The Date header has 1 s resolution: smaller skews are noise. */
  const SESSION_KEY_NAME = "userstatus.apiKey"; /* sessionStorage, only with "Keep the key". */

  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("watch-form"),
    key: $("api-key"),
    remember: $("remember-key"),
    ids: $("user-ids"),
    stopButton: $("stop"),
    formError: $("form-error"),
    actionError: $("action-error"),
    connection: $("connection"),
    empty: $("empty"),
    list: $("user-list"),
    announcer: $("announcer"),
  };

  let apiKey = "";
  let session = null; /* The watching in progress: {ids, ctl: AbortController, wake()}. */
  const users = new Map(); /* user id -> its row and what is known about it. */
  let clockSkewMs = 0; /* Server clock minus this browser's, when they differ noticeably. */

  /* ---------------------------------------------------------------------------------------------
   * Time and status.
   * ------------------------------------------------------------------------------------------ */

  function nowSeconds() {
    return Math.floor((Date.now() + clockSkewMs) / 1000);
  }

  /* Learns the server's clock from a response's Date header, so that "online" and "3 min ago"
   * are right even when this computer's clock is off. */
  function noteServerDate(res) {
    const date = Date.parse(res.headers.get("Date") || "");
    if (!Number.isFinite(date)) return;
    const skew = date - Date.now();
    clockSkewMs = Math.abs(skew) >= CLOCK_SKEW_MIN_MS ? skew : 0;
  }

  /* online when online or active within offlineAfterS; away when online so, but not active for
   * awayAfterS; offline otherwise. Times in Unix seconds, null when unknown. */
  function deriveStatus(active, online, now) {
    const recent = (t) => t !== null && now - t <= offlineAfterS;
    if (!recent(active) && !recent(online)) return "offline";
    if (active === null || now - active > awayAfterS) return "away";
    return "online";
  }

  /* "90 s", "5 min", "2 h": a duration as the legend shows it. */
  function duration(seconds) {
    if (seconds >= 3600 && seconds % 3600 === 0) return seconds / 3600 + " h";
    if (seconds >= 60 && seconds % 60 === 0) return seconds / 60 + " min";
    return seconds + " s";
  }

  /* Reads the service's status rules (status/settings.json: offline_after_ms, away_after_ms). */
  async function loadSettings() {
    try {
      const res = await fetch("status/settings.json", { cache: "no-store", credentials: "omit" });
      const rules = res.ok ? await res.json() : {};
      if (rules.offline_after_ms > 0) offlineAfterS = rules.offline_after_ms / 1000;
      if (rules.away_after_ms > 0) awayAfterS = rules.away_after_ms / 1000;
    } catch (e) {
      /* The defaults stay. */
    }
    $("offline-after").textContent = duration(offlineAfterS);
    $("away-after").textContent = duration(awayAfterS);
    render();
  }

  /* "just now", "42 s ago", "3 min ago", "5 h ago", "2 days ago", then a date. */
  function ago(t, now) {
    const d = Math.max(0, now - t);
    if (d < 5) return "just now";
    if (d < 60) return d + " s ago";
    if (d < 3600) return Math.floor(d / 60) + " min ago";
    if (d < 86400) return Math.floor(d / 3600) + " h ago";
    const days = Math.floor(d / 86400);
    if (days < 7) return days === 1 ? "1 day ago" : days + " days ago";
    return "on " + new Date(t * 1000).toLocaleDateString();
  }

  function timeOrNull(v) {
    return typeof v === "number" && Number.isFinite(v) ? v : null;
  }

  /* ---------------------------------------------------------------------------------------------
   * The list of users.
   * ------------------------------------------------------------------------------------------ */

  /* A user's row: <li data-user><span.badge>online</span><h3.who>id <span.state></h3>
   * <p.detail>last active <time>3 min ago</time></p><button>Mark active</button></li> */
  function makeRow(id) {
    const li = document.createElement("li");
    li.className = "user";
    li.dataset.user = id;
    const badge = document.createElement("span");
    badge.className = "badge";
    const who = document.createElement("h3");
    who.className = "who";
    const name = document.createElement("span");
    name.className = "user-id";
    name.textContent = id;
    const state = document.createElement("span");
    state.className = "state";
    state.hidden = true;
    who.append(name, state);
    const detail = document.createElement("p");
    detail.className = "detail";
    const label = document.createElement("span");
    const time = document.createElement("time");
    detail.append(label, time);
    const mark = document.createElement("button");
    mark.type = "button";
    mark.className = "mark-active";
    mark.textContent = "Mark active";
    mark.setAttribute("aria-label", "Mark " + id + " active");
    mark.addEventListener("click", () => markActive(id, mark));
    li.append(badge, who, detail, mark);
    return { li, badge, state, label, time, mark };
  }

  function showUsers(ids) {
    users.clear();
    el.list.replaceChildren();
    for (const id of ids) {
      const row = makeRow(id);
      users.set(id, {
        row,
        loaded: false, /* Nothing heard yet. */
        pushed: null, /* Status from the watch stream; null: derive it from the times. */
        since: null, /* Unix ms of the last pushed change. */
        active: null,
        online: null,
        state: null,
        shown: null, /* Status on screen, to announce changes once. */
      });
      el.list.append(row.li);
    }
    el.empty.hidden = ids.length > 0;
    render();
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  /* Redraws every row from what is known; called on news and every TICK_MS. */
  function render() {
    const now = nowSeconds();
    const news = [];
    for (const [id, u] of users) {
      const status = !u.loaded ? "unknown" : u.pushed || deriveStatus(u.active, u.online, now);
      const r = u.row;
      r.badge.dataset.status = status;
      r.li.dataset.status = status;
      setText(r.badge, status === "unknown" ? "loading" : status);
      r.state.hidden = u.state === null || u.state === "";
      setText(r.state, u.state || "");

      let label = "", shown = null;
      if (status === "online" || status === "away") {
        shown = u.active !== null ? u.active : u.online;
        label = u.active !== null ? "last active " : "online ";
      } else if (status !== "unknown") {
        const seen = Math.max(u.active ?? -Infinity, u.online ?? -Infinity);
        shown = Number.isFinite(seen) ? seen : null;
        label = shown !== null ? "last seen " : "never seen";
      }
      setText(r.label, label);
      if (shown !== null) {
        const iso = new Date(shown * 1000).toISOString();
        if (r.time.dateTime !== iso) {
          r.time.dateTime = iso;
          r.time.title = new Date(shown * 1000).toLocaleString();
        }
        setText(r.time, ago(shown, now));
      } else {
        setText(r.time, "");
        r.time.removeAttribute("datetime");
        r.time.removeAttribute("title");
      }

      if (u.shown !== null && u.shown !== status && status !== "unknown")
        news.push(id + " is now " + status);
      u.shown = status;
    }
    if (news.length) announce(news.join(". ") + ".");
  }

  /* Says something to screen readers (the list itself is not a live region: it changes every
   * second). */
  function announce(text) {
    el.announcer.textContent = text;
  }

  function setConnection(mode, text) {
    el.connection.dataset.mode = mode;
    setText(el.connection, text);
  }

  /* ---------------------------------------------------------------------------------------------
   * The API.
   * ------------------------------------------------------------------------------------------ */

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  function request(method, body, signal) {
    return fetch("api/" + method, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-API-Key": apiKey },
      body: JSON.stringify(body),
      signal,
      cache: "no-store",
      credentials: "omit",
    });
  }

  /* Calls an API method; returns its "result" or throws ApiError saying what went wrong. */
  async function call(method, body, signal) {
    const res = await request(method, body, signal);
    noteServerDate(res);
    if (res.status === 401)
      throw new ApiError("The API key was refused (HTTP 401). Enter the right key and press Watch.", 401);
    if (!res.ok) throw new ApiError(method + " answered HTTP " + res.status + ".", res.status);
    const reply = await res.json();
    if (reply.error)
      throw new ApiError(method + " failed: error " + reply.error.code + " (" + reply.error.message + ")" +
                         errorDetail(res) + ".", res.status);
    return reply.result;
  }

  function errorDetail(res) {
    const d = res.headers.get("X-Userstatus-Error");
    return d ? ": " + d : "";
  }

  /* Applies a get_user_status result. */
  function applyStatuses(statuses) {
    for (const s of statuses || []) {
      const u = users.get(s.user);
      if (!u) continue;
      u.loaded = true;
      u.pushed = null;
      u.active = timeOrNull(s.active);
      u.online = timeOrNull(s.online);
      u.state = typeof s.state === "string" ? s.state : null;
    }
    render();
  }

  /* Applies one event of the watch stream. "status": the full picture of a user; "change": a
   * transition, with the times as they are now (a change without any time is a deletion). Changes
   * are delivered at least once: one older than the last applied is a replay and is skipped.
   * "bye": the service is stopping (the stream then ends and is opened again). */
  function applyWatchEvent(type, data) {
    let d;
    try {
      d = JSON.parse(data);
    } catch (e) {
      return;
    }
    if (type === "bye") {
      setConnection("reconnecting", "The service closed the stream (" + (d.reason || "no reason") +
                                    "); reconnecting.");
      return;
    }
    if (type !== "status" && type !== "change") return;
    const u = users.get(d.user);
    if (!u) return;
    if (type === "change" && u.since !== null && timeOrNull(d.since) !== null && d.since < u.since)
      return;
    u.loaded = true;
    u.pushed = typeof d.status === "string" ? d.status : null;
    u.active = timeOrNull(d.active);
    u.online = timeOrNull(d.online);
    if (type === "status") {
      u.since = null;
      u.state = typeof d.state === "string" ? d.state : null;
    } else {
      u.since = timeOrNull(d.since);
      if (typeof d.state === "string") u.state = d.state;
      else if (u.active === null && u.online === null) u.state = null;
    }
    render();
  }

  /* ---------------------------------------------------------------------------------------------
   * Watching: the SSE stream, or polling.
   * ------------------------------------------------------------------------------------------ */

  /* Waits ms, or less when the session is woken (after "Mark active") or stopped. */
  function pause(s, ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        s.wake = null;
        s.ctl.signal.removeEventListener("abort", done);
        resolve();
      }
      s.wake = done;
      s.ctl.signal.addEventListener("abort", done);
    });
  }

  /* Reads Server-Sent Events from a fetch() body, calling onEvent(type, data) per event (the
   * parsing rules of the HTML standard: "field: value" lines, "data" lines joined by \n, ":"
   * comments, a blank line ends an event) and onBytes() on every chunk. Resolves at the end. */
  async function readEvents(body, onEvent, onBytes) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = "", type = "", data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      onBytes();
      buf += decoder.decode(value, { stream: true });
      /* A \r at the very end may be the first half of \r\n: it waits for the next chunk. */
      const lines = buf.split(/\r\n|\n|\r(?!$)/);
      buf = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (data.length) onEvent(type || "message", data.join("\n"));
          type = "";
          data = [];
          continue;
        }
        if (line[0] === ":") continue; /* Comment: ": keep-alive". */
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val[0] === " ") val = val.slice(1);
        if (field === "event") type = val;
        else if (field === "data") data.push(val);
      }
    }
  }

  /* Watches through api/watch_user_status until the stream ends. Returns "ended", "stopped",
   * "unauthorized", "unreachable" (no answer at all), or {unavailable: reason} when the service
   * answered but does not offer the stream. */
  async function watchStream(s) {
    const ctl = new AbortController(); /* This stream: the session's, or the idle timer's. */
    const stopStream = () => ctl.abort();
    s.ctl.signal.addEventListener("abort", stopStream);
    let idle = null;
    const touch = () => {
      clearTimeout(idle);
      idle = setTimeout(stopStream, WATCH_IDLE_MS);
    };
    try {
      let res;
      try {
        res = await request("watch_user_status", { users: s.ids }, ctl.signal);
      } catch (e) {
        return s.ctl.signal.aborted ? "stopped" : "unreachable";
      }
      noteServerDate(res);
      if (res.status === 401) return "unauthorized";
      const type = res.headers.get("Content-Type") || "";
      if (res.status !== 200 || !type.startsWith("text/event-stream") || !res.body) {
        let reason = "HTTP " + res.status;
        try {
          const reply = await res.json();
          if (reply.error) reason = "error " + reply.error.code + ", " + reply.error.message;
        } catch (e) {
          /* Not JSON: the HTTP status says enough. */
        }
        return { unavailable: reason };
      }
      setConnection("live", "Live: watching the status stream.");
      touch();
      try {
        await readEvents(res.body, applyWatchEvent, touch);
      } catch (e) {
        /* Aborted (stopped, or idle for too long) or the connection broke. */
      }
      return s.ctl.signal.aborted ? "stopped" : "ended";
    } finally {
      clearTimeout(idle);
      s.ctl.signal.removeEventListener("abort", stopStream);
    }
  }

  /* Polls api/get_user_status every POLL_INTERVAL_MS until the session stops. */
  async function poll(s, why) {
    const polling = "Polling every " + POLL_INTERVAL_MS / 1000 + " s: no status stream here (" + why + ").";
    setConnection("polling", polling);
    while (!s.ctl.signal.aborted) {
      try {
        applyStatuses((await call("get_user_status", { users: s.ids }, s.ctl.signal)).statuses);
        setConnection("polling", polling);
        el.connection.dataset.updated = String(Date.now());
      } catch (e) {
        if (s.ctl.signal.aborted) return;
        if (e.status === 401) return unauthorized();
        setConnection("error", (e instanceof ApiError ? e.message : "Could not reach the service.") +
                               " Retrying.");
      }
      await pause(s, POLL_INTERVAL_MS);
    }
  }

  /* The key was refused: stop, forget it (the variable and the tab's storage) and ask again. */
  function unauthorized() {
    stop();
    apiKey = "";
    keepKeyOrForget();
    el.key.placeholder = "";
    el.key.required = true;
    setConnection("error", "The API key was refused (HTTP 401). Enter the right key and press Watch.");
    el.key.focus();
  }

  /* The stream while the service offers it (opened again whenever it ends), polling when the
   * service answers that it does not. */
  async function run(s) {
    let wait = RECONNECT_MS;
    for (;;) {
      const outcome = await watchStream(s);
      if (outcome === "stopped" || s.ctl.signal.aborted) return;
      if (outcome === "unauthorized") return unauthorized();
      if (outcome.unavailable) return poll(s, outcome.unavailable);
      if (outcome === "unreachable") {
        setConnection("error", "Cannot reach the service; trying again in " + wait / 1000 + " s.");
      } else {
        wait = RECONNECT_MS;
        if (el.connection.dataset.mode === "live")
          setConnection("reconnecting", "The status stream ended; reconnecting.");
      }
      await pause(s, wait);
      if (s.ctl.signal.aborted) return;
      if (outcome === "unreachable") wait = Math.min(wait * 2, RECONNECT_MAX_MS);
    }
  }

  function start(ids) {
    stop();
    const s = { ids, ctl: new AbortController(), wake: null };
    session = s;
    showUsers(ids);
    setConnection("connecting", "Connecting.");
    el.stopButton.disabled = false;
    run(s);
  }

  function stop() {
    if (!session) return;
    session.ctl.abort();
    session = null;
    el.stopButton.disabled = true;
    setConnection("idle", "Stopped.");
  }

  async function markActive(id, button) {
    button.disabled = true;
    showActionError("");
    try {
      await call("update_user_status", { users: [id] });
      announce(id + " marked active.");
      if (session && session.wake) session.wake(); /* Polling: show it now, not in 2 s. */
    } catch (e) {
      if (e.status === 401) return unauthorized();
      showActionError("Could not mark " + id + " active: " +
                      (e instanceof ApiError ? e.message : "the service did not answer."));
    } finally {
      button.disabled = false;
    }
  }

  /* ---------------------------------------------------------------------------------------------
   * The form.
   * ------------------------------------------------------------------------------------------ */

  /* User ids from text: separated by commas, spaces or new lines; duplicates dropped. */
  function parseIds(text) {
    return [...new Set(text.split(/[\s,]+/).filter((s) => s !== ""))];
  }

  function showFormError(text) {
    el.formError.hidden = !text;
    el.formError.textContent = text || "";
  }

  function showActionError(text) {
    el.actionError.hidden = !text;
    el.actionError.textContent = text || "";
  }

  function keyIsSet() {
    el.key.value = "";
    el.key.placeholder = "key set (type here to replace it)";
    el.key.required = false;
  }

  function keepKeyOrForget() {
    try {
      if (el.remember.checked && apiKey) sessionStorage.setItem(SESSION_KEY_NAME, apiKey);
      else sessionStorage.removeItem(SESSION_KEY_NAME);
    } catch (e) {
      /* Storage disabled: the key stays in the variable only. */
    }
  }

  el.form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (el.key.value !== "") apiKey = el.key.value;
    const ids = parseIds(el.ids.value);
    if (!apiKey) {
      showFormError("Enter the API key.");
      el.key.focus();
      return;
    }
    if (!ids.length) {
      showFormError("Enter at least one user id.");
      el.ids.focus();
      return;
    }
    showFormError("");
    keepKeyOrForget();
    keyIsSet();
    /* The ids (never the key) go into the address, so a reload or a bookmark shows them again. */
    history.replaceState(null, "", "#users=" + encodeURIComponent(ids.join(",")));
    start(ids);
  });

  el.stopButton.addEventListener("click", stop);
  el.remember.addEventListener("change", keepKeyOrForget);

  function restore() {
    let kept = null;
    try {
      kept = sessionStorage.getItem(SESSION_KEY_NAME);
    } catch (e) {
      /* Storage disabled. */
    }
    if (kept) {
      apiKey = kept;
      el.remember.checked = true;
      keyIsSet();
    }
    const m = /^#users=(.*)$/.exec(location.hash);
    if (m) {
      let text = "";
      try {
        text = decodeURIComponent(m[1]);
      } catch (e) {
        /* A hand-edited address: ignored. */
      }
      el.ids.value = parseIds(text).join(", ");
      if (apiKey && el.ids.value) el.form.requestSubmit();
    }
  }

  setInterval(render, TICK_MS);
  loadSettings();
  restore();
})();
