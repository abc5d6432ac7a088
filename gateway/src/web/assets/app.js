// The control-room page: login, live alert board (SSE), facility view, shift summary, audit log.
//
// Plain JavaScript, no build step, served by the gateway under `Content-Security-Policy:
// default-src 'self'`: no inline scripts or styles, nothing fetched from elsewhere. Text goes into
// the page with textContent only (alert messages and resident names are data, never markup).
//
// Silence must never look like calm: the page watches the SSE heartbeat (every 5 s from the
// gateway) and shows a red banner with a repeating tone when it is missing for 15 s, when the
// stream errors, or when the gateway reports itself degraded. The state is mirrored on <body> as
// data-conn (connecting|ok|lost), data-tone (none|p1|conn|degraded), data-sound (on|off) and
// data-tone-plays (how many times a tone pattern has sounded).
"use strict";

(function () {
  /** A heartbeat missing this long means the link is down (the gateway sends one every 5 s). */
  const HEARTBEAT_TIMEOUT_MS = 15000;
  /** Wait before building a new EventSource when the browser gave up on the old one. */
  const RECONNECT_MS = 3000;
  /** A full reload of the open alerts now and then, in case an event was missed. */
  const RESYNC_MS = 60000;
  /** The facility view refreshes device states this often while it is shown. */
  const DEVICES_REFRESH_MS = 15000;
  /** The device chart covers this many hours. */
  const CHART_HOURS = 6;
  const PRIORITY_RANK = { P1: 1, P2: 2, P3: 3, P4: 4 };
  const ROLE_RANK = { viewer: 1, operator: 2, admin: 3 };
  /** Metrics preferred for a device's chart, first match wins. */
  const CHART_PREFERENCE = [
    "heart_rate", "spo2", "co_ppm", "gas_lel", "temperature", "skin_temp", "resp_rate",
    "body_movement", "battery_pct",
  ];
  const LANG_KEY = "nh-lang";

  const S = {
    lang: "zh",
    me: null,
    residents: new Map(),
    devices: new Map(),
    devicesAt: 0,
    boardAt: 0,
    alerts: new Map(),
    /** Highest seq seen per alert id, so an older event never undoes a newer one. */
    seen: new Map(),
    pending: null,
    lastResync: 0,
    es: null,
    reconnectTimer: null,
    connectStarted: 0,
    lastBeat: 0,
    conn: "connecting",
    lostSince: null,
    expired: false,
    degraded: false,
    view: "board",
    selectedDevice: null,
    chartData: null,
    audio: null,
    nextToneAt: 0,
    tonePlays: 0,
    action: null,
    fmtCache: new Map(),
  };

  const $ = (id) => document.getElementById(id);
  const body = document.body;

  // ---------------------------------------------------------------- words and times

  function t(key, vars) {
    const dict = window.NH_I18N[S.lang] || window.NH_I18N.zh;
    let s = dict[key];
    if (s === undefined) s = window.NH_I18N.zh[key];
    if (s === undefined) return key;
    if (vars) {
      s = s.replace(/\{(\w+)\}/g, (m, k) => (vars[k] === undefined || vars[k] === null ? "" : String(vars[k])));
    }
    return s;
  }

  function tOr(key, fallback) {
    const dict = window.NH_I18N[S.lang] || window.NH_I18N.zh;
    return dict[key] !== undefined ? dict[key] : fallback;
  }

  function locale() {
    return S.lang === "en" ? "en-GB" : "zh-CN";
  }

  function timeZone() {
    return (S.me && S.me.site && S.me.site.timezone) || undefined;
  }

  function formatter(kind) {
    const key = S.lang + "|" + (timeZone() || "") + "|" + kind;
    let f = S.fmtCache.get(key);
    if (!f) {
      const opts = { hourCycle: "h23" };
      if (kind === "time" || kind === "datetime") Object.assign(opts, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
      if (kind === "hm" || kind === "datehm") Object.assign(opts, { hour: "2-digit", minute: "2-digit" });
      if (kind === "date" || kind === "datetime" || kind === "datehm") Object.assign(opts, { month: "2-digit", day: "2-digit" });
      try {
        f = new Intl.DateTimeFormat(locale(), Object.assign({ timeZone: timeZone() }, opts));
      } catch (e) {
        // An unknown zone name: the browser's own zone beats no time at all.
        f = new Intl.DateTimeFormat(locale(), opts);
      }
      S.fmtCache.set(key, f);
    }
    return f;
  }

  /** A time in the site's zone, with the date when it is not today there. */
  function fmtTime(ms, short) {
    if (ms === null || ms === undefined) return t("never");
    const d = new Date(ms);
    const sameDay = formatter("date").format(d) === formatter("date").format(new Date());
    if (short) return formatter(sameDay ? "hm" : "datehm").format(d);
    return formatter(sameDay ? "time" : "datetime").format(d);
  }

  function fmtDuration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 90) return t("unit_s", { n: s });
    if (s < 90 * 60) return t("unit_min", { n: Math.round(s / 60) });
    if (s < 48 * 3600) return t("unit_h", { n: Math.round(s / 360) / 10 });
    return t("unit_d", { n: Math.round(s / 8640) / 10 });
  }

  function fmtValue(v) {
    if (v === null || v === undefined) return "–";
    if (v === true) return t("yes");
    if (v === false) return t("no");
    if (typeof v === "number") return String(Math.round(v * 100) / 100);
    return tOr("v_" + v, String(v));
  }

  function metricLabel(m) {
    return tOr("m_" + m, m);
  }

  function zoneLabel(z) {
    return tOr("z_" + z, z);
  }

  function classLabel(c) {
    return tOr("cls_" + c, c || "?");
  }

  // ---------------------------------------------------------------- DOM

  /** Builds an element: attrs holds className, dataset entries (data-*), and plain attributes. */
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === "className") e.className = v;
        else if (k === "text") e.textContent = v;
        else if (k.startsWith("data-")) e.dataset[k.slice(5).replace(/-(\w)/g, (m, c) => c.toUpperCase())] = v;
        else e.setAttribute(k, v === true ? "" : v);
      }
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }

  function applyLang() {
    document.documentElement.lang = S.lang === "en" ? "en" : "zh-CN";
    document.title = t("title");
    for (const e of document.querySelectorAll("[data-i18n]")) e.textContent = t(e.dataset.i18n);
    $("lang-toggle").textContent = t("lang_toggle");
    S.fmtCache.clear();
    renderAll();
  }

  // ---------------------------------------------------------------- HTTP

  async function api(method, path, payload) {
    const init = { method, credentials: "same-origin", headers: { accept: "application/json" } };
    if (payload !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    let r;
    try {
      r = await fetch(path, init);
    } catch (e) {
      return { ok: false, status: 0, data: { error: String(e) } };
    }
    let data = null;
    const text = await r.text().catch(() => "");
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (e) {
        data = { error: text };
      }
    }
    if (r.status === 401 && path !== "/api/v1/login" && S.me) endSession(true);
    return { ok: r.ok, status: r.status, data, headers: r.headers };
  }

  // ---------------------------------------------------------------- session

  async function boot() {
    const saved = localStorage.getItem(LANG_KEY);
    S.lang = saved === "en" ? "en" : "zh";
    wire();
    applyLang();
    setInterval(tick, 1000);
    const r = await api("GET", "/api/v1/me");
    if (r.ok && r.data) startSession(r.data);
    else showLogin();
  }

  function showLogin() {
    body.dataset.view = "login";
    $("tabs").hidden = true;
    $("logout").hidden = true;
    $("sound-gate").hidden = true;
    $("sound-toggle").hidden = true;
    $("conn-lost").hidden = true;
    $("degraded").hidden = true;
    $("conn-state").hidden = true;
    $("session-lost").hidden = !S.expired;
    // The clock runs only with a session (it needs the site's zone): never leave it frozen.
    $("clock").textContent = "";
    $("user-name").textContent = "";
    for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== "view-login";
    $("login-user").focus();
  }

  async function login(ev) {
    ev.preventDefault();
    const err = $("login-error");
    err.hidden = true;
    $("login-submit").disabled = true;
    const r = await api("POST", "/api/v1/login", {
      user: $("login-user").value.trim(),
      password: $("login-password").value,
    });
    $("login-submit").disabled = false;
    $("login-password").value = "";
    if (r.ok) {
      const me = await api("GET", "/api/v1/me");
      if (me.ok && me.data) {
        startSession(me.data);
        return;
      }
    }
    if (r.status === 401) err.textContent = t("login_wrong");
    else if (r.status === 429) {
      const s = (r.data && r.data.retry_after_s) || Number(r.headers && r.headers.get("retry-after")) || 60;
      err.textContent = t("login_limited", { s });
    } else err.textContent = t("login_failed", { error: (r.data && r.data.error) || r.status });
    err.hidden = false;
  }

  async function logout() {
    await api("POST", "/api/v1/logout", {});
    endSession(false);
  }

  function startSession(me) {
    S.me = me;
    S.expired = false;
    $("session-lost").hidden = true;
    S.fmtCache.clear();
    body.dataset.role = me.role || "viewer";
    $("site-name").textContent = (me.site && (me.site.name || me.site.id)) || "";
    $("user-name").textContent = (me.name || me.user) + " · " + t("role_" + (me.role || "viewer"));
    $("tabs").hidden = false;
    $("logout").hidden = false;
    $("conn-state").hidden = false;
    updateSoundUi();
    loadResidents();
    loadDevices();
    connect();
    showView(viewFromHash());
    tick();
  }

  /** Back to the login form; `expired` when nobody asked for it (the session ran out or was
   *  revoked): the board is gone, so the page says so loudly instead of looking calm. */
  function endSession(expired) {
    S.expired = !!expired;
    S.me = null;
    if (S.es) S.es.close();
    S.es = null;
    clearTimeout(S.reconnectTimer);
    S.alerts.clear();
    S.seen.clear();
    S.conn = "connecting";
    S.lostSince = null;
    S.lastBeat = 0;
    S.degraded = false;
    body.dataset.conn = "connecting";
    body.dataset.role = "";
    updateTone();
    showLogin();
  }

  function isAtLeast(role) {
    return S.me && (ROLE_RANK[S.me.role] || 0) >= ROLE_RANK[role];
  }

  async function loadResidents() {
    const r = await api("GET", "/api/v1/residents");
    if (r.ok && Array.isArray(r.data)) {
      S.residents = new Map(r.data.map((x) => [x.id, x]));
      renderAll();
    }
  }

  async function loadDevices() {
    const r = await api("GET", "/api/v1/devices");
    if (r.ok && Array.isArray(r.data)) {
      S.devices = new Map(r.data.map((d) => [d.id, d]));
      S.devicesAt = Date.now();
      renderAll();
    }
  }

  // ---------------------------------------------------------------- live stream

  function connect() {
    if (S.es) S.es.close();
    clearTimeout(S.reconnectTimer);
    // The watchdog counts from here until this stream's first heartbeat (a beat of an earlier
    // stream, before a logout say, must not make a fresh login look lost).
    S.connectStarted = Date.now();
    S.lastBeat = 0;
    const es = new EventSource("/api/v1/alerts/stream");
    S.es = es;
    es.addEventListener("open", () => resync());
    es.addEventListener("heartbeat", (e) => {
      if (S.es !== es) return;
      S.lastBeat = Date.now();
      let status = "ok";
      try {
        status = JSON.parse(e.data).status || "ok";
      } catch (err) {
        status = "degraded";
      }
      S.degraded = status !== "ok";
      setConn("ok");
    });
    es.addEventListener("alert", (e) => {
      if (S.es !== es) return;
      let a;
      try {
        a = JSON.parse(e.data);
      } catch (err) {
        return;
      }
      if (S.pending) S.pending.push(a);
      else {
        applyAlert(a);
        renderAll();
      }
    });
    es.addEventListener("error", () => {
      if (S.es !== es) return;
      setConn("lost");
      if (es.readyState === EventSource.CLOSED) {
        // The browser gave up (a non-stream answer such as 401 or 503): ask who we are, then retry.
        S.reconnectTimer = setTimeout(async () => {
          if (!S.me) return;
          const me = await api("GET", "/api/v1/me");
          if (S.me && me.status !== 401) connect();
        }, RECONNECT_MS);
      }
    });
  }

  function setConn(state) {
    if (state === "lost" && S.conn !== "lost") S.lostSince = Date.now();
    if (state === "ok") S.lostSince = null;
    S.conn = state;
    renderConn();
  }

  /** Loads the open alerts afresh; events that arrive meanwhile are applied after it. */
  async function resync() {
    if (S.pending || !S.me) return;
    S.pending = [];
    S.lastResync = Date.now();
    const r = await api("GET", "/api/v1/alerts?state=open");
    const pending = S.pending || [];
    S.pending = null;
    if (r.ok && Array.isArray(r.data)) {
      S.alerts = new Map();
      // Only open alerts need their seq remembered (the stream never replays older events), so
      // a page left open for months keeps a bounded map.
      S.seen = new Map();
      for (const a of r.data) {
        if (a.state === "resolved") continue;
        S.alerts.set(a.id, a);
        S.seen.set(a.id, Math.max(a.seq || 0, S.seen.get(a.id) || 0));
      }
    }
    for (const a of pending) applyAlert(a);
    renderAll();
  }

  function applyAlert(a) {
    if (!a || !a.id) return;
    const seen = S.seen.get(a.id);
    if (seen !== undefined && typeof a.seq === "number" && a.seq < seen) return;
    if (typeof a.seq === "number") S.seen.set(a.id, a.seq);
    if (a.state === "resolved") S.alerts.delete(a.id);
    else S.alerts.set(a.id, a);
  }

  /** Once a second: the clock, the heartbeat watchdog, the tones. */
  function tick() {
    const now = Date.now();
    if (S.me) {
      $("clock").textContent = fmtTime(now);
      const since = S.lastBeat || S.connectStarted;
      if (S.conn !== "lost" && since && now - since > HEARTBEAT_TIMEOUT_MS) setConn("lost");
      if (S.conn === "lost") renderConn();
      if (S.conn === "ok" && now - S.lastResync > RESYNC_MS) resync();
      if (S.view === "facility" && now - S.devicesAt > DEVICES_REFRESH_MS) loadDevices();
      // The "since" ages on the board.
      if (now - S.boardAt > 30000) renderBoard();
    }
    updateTone();
  }

  function renderConn() {
    const lost = !!S.me && S.conn === "lost";
    body.dataset.conn = S.me ? S.conn : "connecting";
    $("conn-lost").hidden = !lost;
    $("conn-lost-since").textContent = lost && S.lostSince ? t("conn_lost_since", { time: fmtTime(S.lostSince) }) : "";
    $("degraded").hidden = !(S.me && S.degraded && !lost);
    const st = $("conn-state");
    st.classList.toggle("ok", S.conn === "ok");
    st.classList.toggle("bad", S.conn === "lost");
    st.textContent =
      S.conn === "ok" ? t("conn_ok", { time: fmtTime(S.lastBeat) }) : S.conn === "lost" ? t("conn_bad") : t("conn_connecting");
    updateTone();
  }

  // ---------------------------------------------------------------- sound

  /** Which repeating tone the page should be sounding now. */
  function wantedTone() {
    if (!S.me) return S.expired ? "conn" : "none";
    if (S.conn === "lost") return "conn";
    for (const a of S.alerts.values()) if (a.priority === "P1" && a.state === "active") return "p1";
    if (S.degraded) return "degraded";
    return "none";
  }

  const PATTERNS = {
    // Three sharp beeps every 2 s: a person may be on the floor.
    p1: { every: 2000, notes: [[988, 0, 0.16], [1319, 0.22, 0.16], [988, 0.44, 0.16]], type: "square" },
    // Two falling tones every 4 s: the page cannot be trusted.
    conn: { every: 4000, notes: [[523, 0, 0.45], [349, 0.5, 0.6]], type: "sawtooth" },
    degraded: { every: 8000, notes: [[440, 0, 0.35], [440, 0.5, 0.35]], type: "sine" },
  };

  function updateTone() {
    const tone = wantedTone();
    if (body.dataset.tone !== tone) {
      body.dataset.tone = tone;
      S.nextToneAt = 0;
    }
    const ctx = S.audio;
    if (tone === "none" || !ctx || ctx.state !== "running") return;
    const now = Date.now();
    if (now < S.nextToneAt) return;
    const p = PATTERNS[tone];
    S.nextToneAt = now + p.every;
    for (const [freq, at, dur] of p.notes) beep(freq, at, dur, p.type);
    // How many times a pattern has sounded: lets a test (or a curious engineer) see it repeat.
    S.tonePlays += 1;
    body.dataset.tonePlays = String(S.tonePlays);
  }

  function beep(freq, at, dur, type) {
    const ctx = S.audio;
    const start = ctx.currentTime + at;
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.type = type;
    osc.frequency.value = freq;
    gain.gain.setValueAtTime(0.0001, start);
    gain.gain.exponentialRampToValueAtTime(0.25, start + 0.02);
    gain.gain.setValueAtTime(0.25, start + dur - 0.04);
    gain.gain.exponentialRampToValueAtTime(0.0001, start + dur);
    osc.connect(gain).connect(ctx.destination);
    osc.start(start);
    osc.stop(start + dur + 0.02);
  }

  async function enableSound() {
    try {
      if (!S.audio) {
        const Ctx = window.AudioContext || window.webkitAudioContext;
        S.audio = new Ctx();
        S.audio.addEventListener("statechange", updateSoundUi);
      }
      await S.audio.resume();
    } catch (e) {
      S.audio = null;
    }
    if (S.audio && S.audio.state === "running") beep(660, 0, 0.12, "sine");
    S.nextToneAt = 0;
    updateSoundUi();
    updateTone();
  }

  function updateSoundUi() {
    const on = !!(S.audio && S.audio.state === "running");
    body.dataset.sound = on ? "on" : "off";
    $("sound-gate").hidden = on || !S.me;
    const b = $("sound-toggle");
    b.hidden = !S.me;
    b.textContent = on ? t("sound_on") : t("sound_off");
  }

  // ---------------------------------------------------------------- views

  function viewFromHash() {
    const v = (location.hash || "").replace(/^#/, "");
    if (v === "audit" && !isAtLeast("admin")) return "board";
    return ["board", "facility", "shifts", "audit"].includes(v) ? v : "board";
  }

  function showView(v) {
    if (!S.me) return;
    S.view = v;
    body.dataset.view = v;
    for (const s of document.querySelectorAll(".view")) s.hidden = s.id !== "view-" + v;
    for (const b of document.querySelectorAll(".tab")) b.setAttribute("aria-selected", String(b.dataset.tab === v));
    if (v === "facility") loadDevices();
    if (v === "shifts") loadShifts();
    if (v === "audit") loadAudit();
    renderAll();
  }

  function renderAll() {
    renderConn();
    updateSoundUi();
    if (!S.me) return;
    $("user-name").textContent = (S.me.name || S.me.user) + " · " + t("role_" + (S.me.role || "viewer"));
    renderBoard();
    if (S.view === "facility") renderFacility();
    if (S.view === "shifts" && S.shifts) renderShifts();
    if (S.view === "audit" && S.audit) renderAudit();
  }

  // ---------------------------------------------------------------- board

  function sortedAlerts() {
    return [...S.alerts.values()].sort(
      (a, b) =>
        (PRIORITY_RANK[a.priority] || 9) - (PRIORITY_RANK[b.priority] || 9) ||
        (a.raised_at || 0) - (b.raised_at || 0)
    );
  }

  function residentOf(a) {
    const dev = S.devices.get(a.device) || {};
    const id = a.resident || dev.resident;
    if (!id) return null;
    return S.residents.get(id) || { id, name: null };
  }

  function renderBoard() {
    const list = sortedAlerts();
    S.boardAt = Date.now();
    const ol = $("alerts");
    ol.replaceChildren(...list.map(alertCard));
    $("no-alerts").hidden = list.length > 0;
    const active = list.filter((a) => a.state === "active").length;
    $("board-counts").textContent = list.length ? t("counts", { n: list.length, active }) : "";
  }

  function alertCard(a) {
    const p = (a.priority || "P4").toLowerCase();
    const dev = S.devices.get(a.device) || {};
    const res = residentOf(a);
    const bed = dev.bed || (res && res.bed);
    const where = el("div", { className: "alert-where" }, a.room || dev.room || t("no_location"));
    if (bed) where.append(" · " + t("bed_n", { bed }));
    if (res) {
      where.append(
        el("span", { className: "who", title: res.id }, res.name || t("unknown_resident", { id: res.id }))
      );
    }
    const message = (S.lang === "en" ? a.message_en : a.message) || a.message || a.message_en || a.rule;
    const devices = Array.isArray(a.devices) && a.devices.length ? a.devices : a.device ? [a.device] : [];
    const meta = el(
      "div",
      { className: "alert-meta" },
      el("span", null, el("span", { className: "k", text: t("rule") }), a.rule || "–"),
      el("span", null, el("span", { className: "k", text: t("device") }), devices.join(", ") || "–"),
      a.value !== undefined && a.value !== null
        ? el("span", null, el("span", { className: "k", text: t("value") }), (a.metric ? metricLabel(a.metric) + " " : "") + fmtValue(a.value))
        : null,
      el(
        "span",
        { className: "since" },
        el("span", { className: "k", text: t("since") }),
        fmtTime(a.raised_at) + t("ago", { d: fmtDuration((Date.now() - a.raised_at) / 1000) })
      ),
      el(
        "span",
        { className: "escalation" },
        el("span", { className: "k", text: t("escalation") }),
        t("escalation_n", { n: a.escalation_level || 0 })
      )
    );
    const state = el("div", { className: "alert-state" }, el("span", { className: "badge", text: t("st_" + a.state) }));
    if (a.state === "acknowledged") {
      state.append(t("acked_by", { who: a.acknowledged_by || "?", time: fmtTime(a.acknowledged_at) }));
      if (a.note) state.append(" · " + t("acked_note", { note: a.note }));
    }
    const li = el(
      "li",
      {
        className: `alert ${p} state-${a.state}`,
        "data-alert-id": a.id,
        "data-priority": a.priority,
        "data-rule": a.rule,
        "data-device": a.device || "",
        "data-state": a.state,
      },
      el("div", { className: "prio", text: a.priority }),
      where,
      el("div", { className: "alert-message", text: message }),
      meta,
      state
    );
    if (isAtLeast("operator")) {
      const actions = el("div", { className: "alert-actions" });
      if (a.state === "active") {
        const b = el("button", { type: "button", className: "ack", text: t("ack") });
        b.addEventListener("click", () => openAction("ack", a.id));
        actions.append(b);
      }
      const r = el("button", { type: "button", className: "resolve", text: t("resolve") });
      r.addEventListener("click", () => openAction("resolve", a.id));
      actions.append(r);
      li.append(actions);
    }
    return li;
  }

  function openAction(kind, id) {
    const a = S.alerts.get(id);
    if (!a) return;
    S.action = { kind, id };
    $("action-title").textContent = t(kind === "ack" ? "ack_title" : "resolve_title");
    $("action-alert").textContent =
      `${a.priority} · ${a.room || ""} · ` + ((S.lang === "en" ? a.message_en : a.message) || a.rule);
    $("resolution-set").hidden = kind !== "resolve";
    $("action-confirm").textContent = t(kind === "ack" ? "ack" : "resolve");
    $("action-note").value = "";
    $("action-error").hidden = true;
    const handled = document.querySelector('input[name="resolution"][value="handled"]');
    if (handled) handled.checked = true;
    $("action-dialog").showModal();
    $("action-note").focus();
  }

  async function confirmAction(ev) {
    ev.preventDefault();
    const act = S.action;
    if (!act) return;
    const note = $("action-note").value.trim();
    let path = `/api/v1/alerts/${encodeURIComponent(act.id)}/`;
    const payload = { note };
    if (act.kind === "ack") path += "ack";
    else {
      path += "resolve";
      const checked = document.querySelector('input[name="resolution"]:checked');
      payload.resolution = checked ? checked.value : "handled";
    }
    $("action-confirm").disabled = true;
    const r = await api("POST", path, payload);
    $("action-confirm").disabled = false;
    if (r.ok) {
      if (r.data && r.data.id) applyAlert(r.data);
      S.action = null;
      $("action-dialog").close();
      renderAll();
      return;
    }
    const err = $("action-error");
    err.textContent =
      r.status === 403 ? t("forbidden") : t("action_failed", { error: (r.data && r.data.error) || r.status });
    err.hidden = false;
  }

  // ---------------------------------------------------------------- facility

  function alarmDevices() {
    const set = new Set();
    for (const a of S.alerts.values()) {
      if (a.device) set.add(a.device);
      if (Array.isArray(a.devices)) for (const d of a.devices) set.add(d);
    }
    return set;
  }

  function deviceStatus(d, alarms) {
    if (alarms.has(d.id)) return "alarm";
    if (d.status) return d.status;
    if (d.fault) return "fault";
    if (d.online === false) return d.last_seen ? "offline" : "never_seen";
    if (d.low_battery) return "low_battery";
    return "ok";
  }

  function naturalCompare(a, b) {
    return String(a).localeCompare(String(b), undefined, { numeric: true });
  }

  function renderFacility() {
    const alarms = alarmDevices();
    const floors = new Map();
    for (const d of S.devices.values()) {
      if (d.class === "gateway") continue;
      const fkey = d.floor === undefined || d.floor === null || d.floor === "" ? null : `${d.building || ""}\u0000${d.floor}`;
      if (!floors.has(fkey)) floors.set(fkey, { building: d.building, floor: d.floor, rooms: new Map() });
      const rooms = floors.get(fkey).rooms;
      const room = d.room || t("no_location");
      if (!rooms.has(room)) rooms.set(room, []);
      rooms.get(room).push(d);
    }
    const keys = [...floors.keys()].sort((a, b) => (a === null) - (b === null) || naturalCompare(a, b));
    const out = [];
    for (const k of keys) {
      const f = floors.get(k);
      const title =
        k === null
          ? t("no_location")
          : f.building
          ? t("floor", { building: f.building, floor: f.floor })
          : t("floor_nobuilding", { floor: f.floor });
      const rooms = [...f.rooms.keys()].sort(naturalCompare).map((name) => roomCard(name, f.rooms.get(name), alarms));
      out.push(el("section", { className: "floor" }, el("h2", { text: title }), el("div", { className: "rooms" }, ...rooms)));
    }
    $("floors").replaceChildren(...out);
    $("legend").replaceChildren(
      ...["ok", "offline", "low_battery", "fault", "alarm"].map((s) =>
        el("span", null, el("span", { className: `chip st-${s}` }), t("status_" + s))
      )
    );
    $("facility-updated").textContent = S.devicesAt ? t("updated", { time: fmtTime(S.devicesAt) }) : "";
    if (S.selectedDevice) renderDevicePanel();
    renderConnectHelp();
  }

  // ---------------------------------------------------------------- connect a device

  /** Where devices reach the broker: `site.mqtt` of `/api/v1/me` (`HOST:PORT`), an
   *  every-interface host replaced by the host this page came from; null with an external broker. */
  function brokerAddress() {
    const a = S.me && S.me.site && S.me.site.mqtt;
    const i = a ? a.lastIndexOf(":") : -1;
    if (i < 0) return null;
    let host = a.slice(0, i).replace(/^\[|\]$/g, "");
    const port = a.slice(i + 1);
    const every = host === "0.0.0.0" || host === "::";
    if (every) host = location.hostname.replace(/^\[|\]$/g, "") || host;
    const loopback = !every && (host.startsWith("127.") || host === "::1" || host === "localhost");
    return { host, port, loopback };
  }

  /** The "connect a device" help (admins, under the floors): the broker, the login (the device id
   *  as username and client id, its secret), the command that makes a secret on the gateway's
   *  machine, and a mosquitto_pub line with one canonical reading. It never holds a secret: the
   *  gateway keeps only hashes. Filled in for the selected device, if any. */
  function renderConnectHelp() {
    const box = $("connect-body");
    if (!S.me || !box) return;
    const site = (S.me.site && S.me.site.id) || "<site>";
    const id = S.selectedDevice || "<device-id>";
    const b = brokerAddress();
    const host = b ? b.host : "<host>";
    const port = b ? b.port : "<port>";
    const code = (text) => el("pre", null, el("code", { text }));
    const payload = JSON.stringify({ seq: 1, metrics: { battery_pct: 87 } });
    box.replaceChildren(
      el("p", { className: "hint", text: t("connect_intro") }),
      el(
        "dl",
        { className: "facts" },
        el("dt", { text: t("connect_broker") }),
        el("dd", { text: b ? `${host}:${port}` : t("connect_broker_external") }),
        el("dt", { text: t("connect_username") }),
        el("dd", { text: S.selectedDevice || t("connect_username_is") }),
        el("dt", { text: t("connect_client_id") }),
        el("dd", { text: S.selectedDevice || t("connect_client_id_is") }),
        el("dt", { text: t("connect_password") }),
        el("dd", { text: t("connect_password_is") })
      ),
      b && b.loopback ? el("p", { className: "hint", text: t("connect_loopback") }) : null,
      el("p", { text: t("connect_secret_how") }),
      code(`nh-gateway device-credentials --config site.toml --identity ${id}`),
      el("p", { text: t("connect_try") }),
      code(
        `mosquitto_pub -h ${host} -p ${port} -q 1 -i ${id} -u ${id} -P '<secret>' ` +
          `-t nh/${site}/${id}/telemetry -m '${payload}'`
      ),
      el("p", { className: "hint", text: t("connect_docs") })
    );
  }

  function roomCard(name, devices, alarms) {
    devices.sort((a, b) => naturalCompare(a.class + a.id, b.class + b.id));
    const residents = [...S.residents.values()].filter((r) => r.room === name);
    const inAlarm = devices.some((d) => alarms.has(d.id));
    const buttons = devices.map((d) => {
      const st = deviceStatus(d, alarms);
      const label = classLabel(d.class) + (d.bed ? " · " + t("bed_n", { bed: d.bed }) : d.zone ? " · " + zoneLabel(d.zone) : "");
      const b = el(
        "button",
        {
          type: "button",
          className: `device st-${st}` + (S.selectedDevice === d.id ? " selected" : ""),
          "data-device-id": d.id,
          "data-status": st,
          title: d.id,
        },
        el("span", { className: "name", text: label }),
        el("span", { className: "st" }, el("span", { className: "chip" }), t("status_" + st))
      );
      b.addEventListener("click", () => selectDevice(d.id));
      return b;
    });
    return el(
      "div",
      { className: "room" + (inAlarm ? " in-alarm" : ""), "data-room": name },
      el("div", { className: "room-name", text: name }),
      residents.length
        ? el("div", { className: "room-residents", text: residents.map((r) => r.name + (r.bed ? ` (${t("bed_n", { bed: r.bed })})` : "")).join(", ") })
        : null,
      el("div", { className: "devices" }, ...buttons)
    );
  }

  async function selectDevice(id) {
    S.selectedDevice = id;
    S.chartData = null;
    $("device-panel").hidden = false;
    renderFacility();
    const since = Date.now() - CHART_HOURS * 3600 * 1000;
    const r = await api("GET", `/api/v1/readings?device=${encodeURIComponent(id)}&since=${since}&limit=20000`);
    if (S.selectedDevice !== id) return;
    S.chartData = { id, since, rows: r.ok && Array.isArray(r.data) ? r.data : [] };
    const metrics = chartMetrics(S.chartData.rows);
    const sel = $("chart-metric");
    const keep = sel.value;
    sel.replaceChildren(...metrics.map((m) => el("option", { value: m, text: metricLabel(m) })));
    const pick = metrics.includes(keep) ? keep : CHART_PREFERENCE.find((m) => metrics.includes(m)) || metrics[0];
    if (pick) sel.value = pick;
    renderDevicePanel();
  }

  function chartMetrics(rows) {
    const seen = new Set();
    for (const row of rows) {
      for (const [k, v] of Object.entries(row.metrics || {})) {
        if (typeof v === "number" || typeof v === "boolean") seen.add(k);
      }
    }
    return [...seen].sort((a, b) => {
      const ia = CHART_PREFERENCE.indexOf(a);
      const ib = CHART_PREFERENCE.indexOf(b);
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
    });
  }

  function renderDevicePanel() {
    const d = S.devices.get(S.selectedDevice);
    if (!d) {
      $("device-panel").hidden = true;
      return;
    }
    const alarms = alarmDevices();
    const st = deviceStatus(d, alarms);
    $("device-title").textContent = `${classLabel(d.class)} · ${d.id}`;
    const res = d.resident ? S.residents.get(d.resident) : null;
    const facts = [
      [t("class"), classLabel(d.class)],
      [t("room"), d.room || "–"],
      d.zone ? [t("zone"), zoneLabel(d.zone)] : null,
      d.bed ? [t("bed"), d.bed] : null,
      d.resident ? [t("resident"), res ? res.name : d.resident] : null,
      [t("status"), null],
      [t("last_seen"), d.last_seen ? fmtTime(d.last_seen) : t("never")],
      d.battery_pct !== undefined && d.battery_pct !== null ? [t("battery"), fmtValue(d.battery_pct) + " %"] : null,
      d.interval_s ? [t("interval"), fmtDuration(d.interval_s)] : null,
    ].filter(Boolean);
    const dl = $("device-facts");
    dl.replaceChildren();
    for (const [k, v] of facts) {
      if (v === null) {
        dl.append(el("dt", { text: k }), el("dd", { className: `st-${st}` }, el("span", { className: "chip" }), t("status_" + st)));
        continue;
      }
      dl.append(el("dt", { text: k }), el("dd", { text: v }));
    }
    const values = Object.entries(d.last_values || {});
    if (values.length) {
      dl.append(el("dt", { className: "facts-head", text: t("last_values") }));
      for (const [m, v] of values.sort((a, b) => a[0].localeCompare(b[0]))) {
        dl.append(el("dt", { className: "metric", text: metricLabel(m) }), el("dd", { text: fmtValue(v) }));
      }
    }
    renderChart();
  }

  function renderChart() {
    const box = $("chart");
    const data = S.chartData;
    const metric = $("chart-metric").value;
    if (!data || data.id !== S.selectedDevice) {
      box.replaceChildren(el("p", { className: "counts", text: "…" }));
      $("chart-range").textContent = "";
      return;
    }
    const pts = [];
    for (const row of data.rows) {
      const v = row.metrics ? row.metrics[metric] : undefined;
      if (typeof v === "number") pts.push([row.ts, v]);
      else if (typeof v === "boolean") pts.push([row.ts, v ? 1 : 0]);
    }
    $("chart-range").textContent = t("chart_range", { h: CHART_HOURS, n: pts.length });
    if (!pts.length) {
      box.replaceChildren(el("p", { className: "counts", text: t("chart_empty") }));
      return;
    }
    const W = 640;
    const H = 260;
    const L = 52;
    const R = 12;
    const T = 12;
    const B = 30;
    const x0 = data.since;
    const x1 = Math.max(Date.now(), pts[pts.length - 1][0]);
    let y0 = Math.min(...pts.map((p) => p[1]));
    let y1 = Math.max(...pts.map((p) => p[1]));
    if (y0 === y1) {
      y0 -= 1;
      y1 += 1;
    }
    const pad = (y1 - y0) * 0.08;
    y0 -= pad;
    y1 += pad;
    const X = (ts) => L + ((ts - x0) / (x1 - x0)) * (W - L - R);
    const Y = (v) => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": metricLabel(metric) });
    for (let i = 0; i <= 4; i++) {
      const v = y0 + ((y1 - y0) * i) / 4;
      root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: Y(v), y2: Y(v) }));
      const lab = svg("text", { class: "grid-label", x: L - 6, y: Y(v) + 4, "text-anchor": "end" });
      lab.textContent = fmtValue(v);
      root.append(lab);
    }
    for (let i = 0; i <= CHART_HOURS; i += 2) {
      const ts = x1 - (CHART_HOURS - i) * 3600 * 1000;
      const anchor = i === 0 ? "start" : i >= CHART_HOURS ? "end" : "middle";
      const lab = svg("text", { class: "grid-label", x: X(ts), y: H - 8, "text-anchor": anchor });
      lab.textContent = fmtTime(ts, true);
      root.append(lab);
    }
    const d = pts.map((p, i) => (i ? "L" : "M") + X(p[0]).toFixed(1) + " " + Y(p[1]).toFixed(1)).join(" ");
    root.append(svg("path", { class: "series", d }));
    const last = pts[pts.length - 1];
    root.append(svg("circle", { class: "dot", cx: X(last[0]), cy: Y(last[1]), r: 4 }));
    box.replaceChildren(root);
  }

  // ---------------------------------------------------------------- shifts and audit

  async function loadShifts() {
    const r = await api("GET", "/api/v1/shifts");
    if (r.ok && r.data) {
      S.shifts = r.data.shifts || [];
      renderShifts();
    }
  }

  function renderShifts() {
    const cards = (S.shifts || []).map((s) => {
      const raised = s.raised || {};
      const rows = [
        [t("shift_acknowledged"), s.acknowledged],
        [t("shift_ack_median"), s.ack_median_s === null || s.ack_median_s === undefined ? "–" : fmtDuration(s.ack_median_s)],
        [t("shift_ack_worst"), s.ack_worst_s === null || s.ack_worst_s === undefined ? "–" : fmtDuration(s.ack_worst_s)],
        [t("shift_open_at_end"), s.open_at_end],
      ];
      const end = s.label === "current" && (!s.end || s.end > Date.now()) ? t("shift_now") : fmtTime(s.end, true);
      return el(
        "div",
        { className: "shift", "data-shift": s.label },
        el("h2", { text: t(s.label === "current" ? "shift_current" : "shift_previous") }),
        el("div", { className: "range", text: `${fmtTime(s.start, true)} – ${end}` }),
        el("div", { className: "k", text: t("shift_raised") }),
        el(
          "div",
          { className: "raised" },
          ...["P1", "P2", "P3", "P4"].map((p) => el("span", { className: p.toLowerCase(), text: `${p}  ${raised[p] || 0}` }))
        ),
        el(
          "table",
          { className: "table" },
          el("tbody", null, ...rows.map(([k, v]) => el("tr", null, el("th", { text: k }), el("td", { className: "num", text: String(v === undefined ? "–" : v) }))))
        )
      );
    });
    $("shifts").replaceChildren(...cards);
  }

  async function loadAudit() {
    const r = await api("GET", "/api/v1/audit?limit=200");
    if (r.ok && Array.isArray(r.data)) {
      S.audit = r.data;
      renderAudit();
    }
  }

  function auditDetail(d) {
    if (d === null || d === undefined) return "";
    if (typeof d !== "object") return String(d);
    return Object.entries(d)
      .map(([k, v]) => `${k}: ${typeof v === "object" && v !== null ? JSON.stringify(v) : fmtValue(v)}`)
      .join(" · ");
  }

  function renderAudit() {
    const rows = (S.audit || []).map((e) =>
      el(
        "tr",
        { "data-action": e.action },
        el("td", { className: "num", text: fmtTime(e.at) }),
        el("td", { text: e.actor || "" }),
        el("td", { text: tOr("act_" + e.action, e.action) }),
        el("td", { text: e.alert_id || "" }),
        el("td", { text: e.note || "" }),
        el("td", { className: "detail", text: auditDetail(e.detail) })
      )
    );
    $("audit-rows").replaceChildren(...rows);
  }

  // ---------------------------------------------------------------- wiring

  function wire() {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", logout);
    $("lang-toggle").addEventListener("click", () => {
      S.lang = S.lang === "zh" ? "en" : "zh";
      localStorage.setItem(LANG_KEY, S.lang);
      applyLang();
    });
    $("enable-sound").addEventListener("click", enableSound);
    $("sound-toggle").addEventListener("click", enableSound);
    for (const b of document.querySelectorAll(".tab")) {
      b.addEventListener("click", () => {
        location.hash = b.dataset.tab;
      });
    }
    window.addEventListener("hashchange", () => showView(viewFromHash()));
    $("action-form").addEventListener("submit", confirmAction);
    $("action-cancel").addEventListener("click", () => {
      S.action = null;
      $("action-dialog").close();
    });
    $("device-close").addEventListener("click", () => {
      S.selectedDevice = null;
      $("device-panel").hidden = true;
      renderFacility();
    });
    $("chart-metric").addEventListener("change", renderChart);
  }

  boot();
})();
