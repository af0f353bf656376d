/* Conveyor web UI: the little script the server-rendered pages need (docs/web-ui.md).
 *
 * - Actions (cancel, approve/reject, abort/rollback) POST to the JSON API with the
 *   session cookie and the page's CSRF token (body[data-csrf]) in X-CSRF-Token.
 * - Runs list: its rows are fetched again every 5 s (/ui/runs, an HTML fragment).
 * - Run page: the run's event stream (/api/v1/runs/RUN/events) recolours the graph's
 *   job nodes (`g.job[data-job]`: class status-S, data-status, glyph, title) as soon as
 *   a status changes, and the details (/ui/runs/RUN/panels) are fetched again after
 *   changes and every 3 s while the run goes on (deployment state has no event).
 * - Log view: the log is fetched once as JSON (lines already rendered to escaped HTML
 *   by the server) and only the rows in sight are in the DOM (virtual scrolling); a
 *   running job's new lines come over /api/v1/runs/RUN/jobs/JOB/log?follow=1 and are
 *   coloured here the way the server colours the rest.
 *
 * No inline script or style anywhere (the CSP forbids both): data comes from data-*
 * attributes and <script type="application/json"> blocks.
 */
"use strict";
(function () {
  var csrf = document.body.getAttribute("data-csrf") || "";

  function readJSON(id) {
    var el = document.getElementById(id);
    if (!el) return null;
    try { return JSON.parse(el.textContent); } catch (e) { return null; }
  }
  var glyphs = readJSON("glyphs") || {};

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;"}[c];
    });
  }

  // -- a live log line's colours -----------------------------------------------------------
  // The same rendering as coordinator/server/ui/ansi.py, for lines that arrive over the
  // log stream: SGR sequences become spans with the same fixed classes (256-colour and
  // truecolor as data-c), every other sequence and control character is dropped, only
  // what follows a line's last carriage return is kept, and all text is escaped. The
  // markup is made from numbers and fixed names only.
  var SEQUENCE = /\x1b\[([0-?]*)([ -\/]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[PX^_][^\x1b]*(?:\x1b\\)?|\x1b[@-Z\\-_]?/g;
  var CONTROLS = /[\x00-\x08\x0a-\x1f\x7f-\x9f]/g;
  var PLAIN = {fg: null, bg: null, bold: false, dim: false, italic: false, underline: false, strike: false};

  function hex2(n) { return (n < 16 ? "0" : "") + n.toString(16); }
  function cube(n) {
    if (n >= 232) { var g = 8 + 10 * (n - 232); return "#" + hex2(g) + hex2(g) + hex2(g); }
    n -= 16;
    var v = [Math.floor(n / 36), Math.floor(n / 6) % 6, n % 6].map(function (x) { return x ? 55 + 40 * x : 0; });
    return "#" + hex2(v[0]) + hex2(v[1]) + hex2(v[2]);
  }
  function num(text) { var n = parseInt(text || "0", 10); return isNaN(n) || String(text).length > 6 ? -1 : n; }
  function extended(parts) {  // after 38/48: [colour or undefined, parts used]
    var mode = num(parts[0]);
    if (mode === 5 && parts.length >= 2) {
      var n = num(parts[1]);
      return [n >= 0 && n < 16 ? n : (n >= 16 && n <= 255 ? cube(n) : undefined), 2];
    }
    if (mode === 2 && parts.length >= 4) {
      var rgb = parts.slice(1, 4).map(num);
      var ok = rgb.every(function (x) { return x >= 0 && x <= 255; });
      return [ok ? "#" + hex2(rgb[0]) + hex2(rgb[1]) + hex2(rgb[2]) : undefined, 4];
    }
    return [undefined, parts.length];
  }
  function applySgr(params, st) {
    var parts = params.split(";"), i = 0;
    while (i < parts.length) {
      var part = parts[i++];
      if (part.indexOf(":") >= 0) {
        var sub = part.split(":"), code0 = num(sub[0]);
        if (code0 === 38 || code0 === 48) {
          var rest = sub.slice(1);
          if (rest.length >= 5 && num(rest[0]) === 2) rest = [rest[0]].concat(rest.slice(-3));
          var c0 = extended(rest)[0];
          if (c0 !== undefined) st[code0 === 38 ? "fg" : "bg"] = c0;
        } else if (code0 === 4) st.underline = sub.length > 1 ? num(sub[1]) !== 0 : true;
        continue;
      }
      var code = num(part);
      if (code === 0) { for (var k in PLAIN) st[k] = PLAIN[k]; }
      else if (code === 1) st.bold = true; else if (code === 2) st.dim = true;
      else if (code === 3) st.italic = true; else if (code === 4) st.underline = true;
      else if (code === 9) st.strike = true; else if (code === 22) { st.bold = false; st.dim = false; }
      else if (code === 23) st.italic = false; else if (code === 24) st.underline = false;
      else if (code === 29) st.strike = false;
      else if (code >= 30 && code <= 37) st.fg = code - 30; else if (code >= 90 && code <= 97) st.fg = code - 82;
      else if (code >= 40 && code <= 47) st.bg = code - 40; else if (code >= 100 && code <= 107) st.bg = code - 92;
      else if (code === 39) st.fg = null; else if (code === 49) st.bg = null;
      else if (code === 38 || code === 48) {
        var got = extended(parts.slice(i));
        i += got[1];
        if (got[0] !== undefined) st[code === 38 ? "fg" : "bg"] = got[0];
      }
    }
  }
  function openSpan(st) {
    var classes = [], styles = [];
    if (typeof st.fg === "number") classes.push("ansi-fg-" + st.fg); else if (st.fg) styles.push("color:" + st.fg);
    if (typeof st.bg === "number") classes.push("ansi-bg-" + st.bg); else if (st.bg) styles.push("background-color:" + st.bg);
    ["bold", "dim", "italic", "underline", "strike"].forEach(function (f) { if (st[f]) classes.push("ansi-" + f); });
    if (!classes.length && !styles.length) return "";
    return "<span" + (classes.length ? ' class="' + classes.join(" ") + '"' : "") +
           (styles.length ? ' data-c="' + styles.join(";") + '"' : "") + ">";
  }
  function ansiLine(line, st) {  // -> HTML of one line; `st` (per stream) is updated
    var pieces = [], last = 0, m;
    SEQUENCE.lastIndex = 0;
    while ((m = SEQUENCE.exec(line)) !== null) {
      if (m.index > last) pieces.push(line.slice(last, m.index));
      if (m[3] === "m" && !m[2] && /^[0-9;:]*$/.test(m[1])) pieces.push({sgr: m[1]});
      last = SEQUENCE.lastIndex;
      if (m[0].length === 0) SEQUENCE.lastIndex++;
    }
    if (last < line.length) pieces.push(line.slice(last));
    var text = pieces.filter(function (p) { return typeof p === "string"; }).join("");
    var skip = text.replace(/\r+$/, "").lastIndexOf("\r") + 1;
    var out = "";
    pieces.forEach(function (p) {
      if (typeof p !== "string") { applySgr(p.sgr, st); return; }
      if (skip) { var drop = Math.min(skip, p.length); skip -= drop; p = p.slice(drop); }
      p = p.replace(CONTROLS, "");
      if (!p) return;
      var open = openSpan(st);
      out += open + escapeHtml(p) + (open ? "</span>" : "");
    });
    return out;
  }

  var flashTimer = null;
  function flash(text, isError) {
    var box = document.getElementById("flash");
    if (!box) return;
    box.textContent = text;
    box.className = "flash" + (isError ? " flash-error" : "");
    box.hidden = false;
    clearTimeout(flashTimer);
    flashTimer = setTimeout(function () { box.hidden = true; }, isError ? 12000 : 5000);
  }

  function badge(el, status, label) {
    // <span class="st st-S"><span class="ic">G</span> <span class="word">LABEL</span></span>
    var outer = document.createElement("span");
    outer.className = "st st-" + status;
    outer.setAttribute("data-status", status);
    var ic = document.createElement("span");
    ic.className = "ic";
    ic.setAttribute("aria-hidden", "true");
    ic.textContent = glyphs[status] || "?";
    var word = document.createElement("span");
    word.className = "word";
    word.textContent = label || status;
    outer.appendChild(ic);
    outer.appendChild(document.createTextNode(" "));
    outer.appendChild(word);
    el.replaceChildren(outer);
  }

  // -- actions ----------------------------------------------------------------------------

  var afterAction = null;  // the run page refreshes its panels after an action

  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest ? ev.target.closest("button[data-post]") : null;
    if (!btn) return;
    ev.preventDefault();
    if (btn.getAttribute("data-confirm") && btn.getAttribute("data-armed") !== "1") {
      // Destructive actions take a second click (no confirm() dialog).
      btn.setAttribute("data-armed", "1");
      btn.setAttribute("data-text", btn.textContent);
      btn.textContent = btn.getAttribute("data-confirm");
      setTimeout(function () {
        if (btn.getAttribute("data-armed") === "1") {
          btn.setAttribute("data-armed", "");
          btn.textContent = btn.getAttribute("data-text");
        }
      }, 5000);
      return;
    }
    btn.setAttribute("data-armed", "");
    var body = null;
    var decision = btn.getAttribute("data-decision");
    if (decision) {
      body = {decision: decision};
      var gate = btn.closest(".gate");
      var input = gate ? gate.querySelector("input.comment") : null;
      if (input && input.value.trim()) body.comment = input.value.trim();
    }
    btn.disabled = true;
    fetch(btn.getAttribute("data-post"), {
      method: "POST", credentials: "same-origin",
      headers: {"X-CSRF-Token": csrf, "Content-Type": "application/json", "Accept": "application/json"},
      body: body ? JSON.stringify(body) : null
    }).then(function (resp) {
      return resp.json().catch(function () { return null; }).then(function (data) {
        if (resp.ok) {
          var message = btn.getAttribute("data-done") || "Done";
          if (data && data.warning) message += " (" + data.warning + ")";
          flash(message, false);
        } else {
          flash((data && data.error && data.error.message) || ("Refused (HTTP " + resp.status + ")"), true);
          if (resp.status === 401) window.location.reload();
        }
      });
    }).catch(function (err) {
      flash("The server could not be reached: " + err.message, true);
    }).then(function () {
      btn.disabled = false;
      if (btn.getAttribute("data-text")) btn.textContent = btn.getAttribute("data-text");
      if (afterAction) afterAction();
    });
  });

  // -- runs list ----------------------------------------------------------------------------

  function initRuns() {
    var table = document.getElementById("runs");
    var rows = document.getElementById("runs-rows");
    if (!table || !rows) return;
    var url = table.getAttribute("data-rows-url");
    setInterval(function () {
      if (document.hidden) return;
      fetch(url, {credentials: "same-origin", headers: {"Accept": "text/html"}}).then(function (resp) {
        if (resp.status === 401) { window.location.reload(); return null; }
        return resp.ok ? resp.text() : null;
      }).then(function (html) {
        if (html !== null && html !== undefined) rows.innerHTML = html;  // server-rendered, escaped
      }).catch(function () {});
    }, 5000);
  }

  // -- run page -----------------------------------------------------------------------------

  function setJobStatus(job, status) {
    var sel = '[data-job="' + CSS.escape(job) + '"]';
    var node = document.querySelector("svg.dag g.job" + sel);
    if (node) {
      var keep = [];
      node.classList.forEach(function (c) { if (c.indexOf("status-") !== 0) keep.push(c); });
      keep.push("status-" + status);
      node.setAttribute("class", keep.join(" "));
      node.setAttribute("data-status", status);
      var icon = node.querySelector(".job-icon");
      if (icon) icon.textContent = glyphs[status] || "?";
      var title = node.querySelector("title");
      if (title) title.textContent = job + " (" + status + ")";
    }
    var row = document.querySelector("table.jobs tr" + sel);
    if (row && row.cells.length > 1) badge(row.cells[1], status, status);
  }

  function initRun() {
    var root = document.getElementById("run");
    if (!root) return;
    var panelsUrl = root.getAttribute("data-panels-url");
    var running = root.getAttribute("data-running") === "true";
    var busy = false, again = false, timer = null;

    function refreshPanels() {
      if (busy) { again = true; return; }
      busy = true;
      fetch(panelsUrl, {credentials: "same-origin", headers: {"Accept": "text/html"}}).then(function (resp) {
        if (resp.status === 401) { window.location.reload(); return null; }
        return resp.ok ? resp.text() : null;
      }).then(function (html) {
        if (!html) return;
        var tpl = document.createElement("template");
        tpl.innerHTML = html;  // server-rendered, escaped
        ["head", "details"].forEach(function (part) {
          var fresh = tpl.content.querySelector('[data-part="' + part + '"]');
          var old = root.querySelector('[data-part="' + part + '"]');
          if (!fresh || !old) return;
          // Someone typing a comment or about to confirm keeps the panel they are using.
          var active = document.activeElement;
          if (active && old.contains(active) && (active.tagName === "INPUT" || active.getAttribute("data-armed") === "1")) return;
          if (old.querySelector('[data-armed="1"]')) return;
          old.replaceWith(fresh);
        });
      }).catch(function () {}).then(function () {
        busy = false;
        if (again) { again = false; schedule(); }
      });
    }
    function schedule() {
      if (timer) return;
      timer = setTimeout(function () { timer = null; refreshPanels(); }, 700);
    }
    afterAction = schedule;

    if (!running || !window.EventSource) return;
    var source = new EventSource(root.getAttribute("data-events-url"));
    source.addEventListener("status", function (ev) {
      var data = JSON.parse(ev.data);
      if (data && data.job) setJobStatus(data.job, data.to);
      schedule();
    });
    source.addEventListener("end", function () {
      source.close();
      running = false;
      root.setAttribute("data-running", "false");
      refreshPanels();
    });
    var poll = setInterval(function () {
      if (!running) { clearInterval(poll); return; }
      if (!document.hidden) schedule();
    }, 3000);
  }

  // -- log view -----------------------------------------------------------------------------

  var STREAMS = {stdout: "o", stderr: "e", system: "s"};
  var OVERSCAN = 30;
  var FIRST_LINES = 2000;

  function initLog() {
    var box = document.getElementById("log");
    if (!box) return;
    var spacer = box.querySelector(".log-spacer");
    var win = box.querySelector(".log-window");
    var info = document.getElementById("log-info");
    var jumpError = document.getElementById("jump-error");
    var jumpEnd = document.getElementById("jump-end");
    var html = [], streams = "", firstError = null, selected = null;
    var rowH = 20, drawn = [-1, -1], frame = null, live = false;

    function measure() {
      win.innerHTML = '<div class="row"><a class="ln">1</a><code>x</code></div>';
      var h = win.firstChild.getBoundingClientRect().height;
      if (h > 0) rowH = h;
      win.innerHTML = "";
    }

    function draw(force) {
      frame = null;
      var n = html.length;
      spacer.style.height = (n * rowH) + "px";
      var first = Math.max(0, Math.floor(box.scrollTop / rowH) - OVERSCAN);
      var last = Math.min(n, Math.ceil((box.scrollTop + box.clientHeight) / rowH) + OVERSCAN);
      if (!force && first === drawn[0] && last === drawn[1]) return;
      drawn = [first, last];
      var parts = [];
      for (var i = first; i < last; i++) {
        var no = i + 1;
        // html[i] is the server's escaped rendering (or a live line escaped here).
        parts.push('<div class="row s-' + (streams.charAt(i) || "o") + (selected === no ? " hl" : "") +
                   (firstError === i ? " first-error" : "") + '" id="L' + no + '"><a class="ln" href="#L' + no +
                   '">' + no + "</a><code>" + html[i] + "</code></div>");
      }
      win.style.transform = "translateY(" + (first * rowH) + "px)";
      win.innerHTML = parts.join("");
      // 256-colour and truecolor spans: data-c="color:#rrggbb;..." set through the CSSOM
      // (the CSP refuses style attributes).
      var styled = win.querySelectorAll("span[data-c]");
      for (var k = 0; k < styled.length; k++) {
        styled[k].getAttribute("data-c").split(";").forEach(function (decl) {
          var m = /^(color|background-color):(#[0-9a-f]{6})$/.exec(decl);
          if (m) this.style.setProperty(m[1], m[2]);
        }, styled[k]);
      }
    }
    function redraw(force) {
      if (force) { drawn = [-1, -1]; }
      if (!frame) frame = window.requestAnimationFrame(function () { draw(false); });
    }
    function atBottom() { return box.scrollTop + box.clientHeight >= box.scrollHeight - 2 * rowH; }
    function goTo(no, highlight) {
      no = Math.max(1, Math.min(no, html.length));
      if (highlight) selected = no;
      box.scrollTop = Math.max(0, (no - 1) * rowH - box.clientHeight / 3);
      drawn = [-1, -1];
      draw(true);
    }
    function describe() {
      var text = html.length + (html.length === 1 ? " line" : " lines");
      if (live) text += " · following live";
      info.textContent = text;
    }
    function fromHash() {
      var m = /^#L(\d+)$/.exec(window.location.hash);
      if (m && html.length) goTo(parseInt(m[1], 10), true);
    }

    box.addEventListener("scroll", function () { redraw(false); });
    window.addEventListener("resize", function () { redraw(true); });
    window.addEventListener("hashchange", fromHash);
    box.addEventListener("click", function (ev) {
      var a = ev.target.closest ? ev.target.closest("a.ln") : null;
      if (!a) return;
      ev.preventDefault();
      var no = parseInt(a.textContent, 10);
      history.replaceState(null, "", "#L" + no);
      selected = no;
      drawn = [-1, -1];
      draw(true);
    });
    jumpError.addEventListener("click", function () {
      if (firstError !== null) { history.replaceState(null, "", "#L" + (firstError + 1)); goTo(firstError + 1, true); }
    });
    jumpEnd.addEventListener("click", function () { box.scrollTop = box.scrollHeight; redraw(false); });

    function load(limit, then) {
      var url = box.getAttribute("data-lines-url") + (limit ? "?limit=" + limit : "");
      fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (resp) {
          if (resp.status === 401) { window.location.reload(); return null; }
          return resp.ok ? resp.json() : null;
        }).then(function (data) {
          if (!data) { info.textContent = "The log could not be loaded."; return; }
          var follow = html.length > 0 && atBottom();
          html = data.html;
          streams = data.streams;
          firstError = data.first_error;
          jumpError.disabled = firstError === null;
          jumpError.title = firstError === null ? "no error found" : "line " + (firstError + 1);
          var status = document.getElementById("job-status");
          if (status && data.status) badge(status, data.status, data.label);
          drawn = [-1, -1];
          draw(true);
          if (follow) { box.scrollTop = box.scrollHeight; draw(true); }
          describe();
          if (data.more) info.textContent += " shown so far, loading the rest…";
          if (then) then(data);
        }).catch(function (err) { info.textContent = "The log could not be loaded: " + err.message; });
    }

    function follow() {
      if (!window.EventSource) return;
      live = true;
      describe();
      var seen = 0, states = {};
      var source = new EventSource(box.getAttribute("data-follow-url"));
      source.addEventListener("open", function () { seen = 0; });  // a (re)connection replays from line 1
      source.addEventListener("line", function (ev) {
        seen += 1;
        if (seen <= html.length) return;
        var data = JSON.parse(ev.data);
        var stick = atBottom();
        // Rendered here as the server would (the server's rendering replaces the whole
        // log when the job ends); colours carry over within a stream from the live start.
        var code = STREAMS[data.stream] || "o";
        if (!states[code]) states[code] = Object.assign({}, PLAIN);
        html.push(ansiLine(String(data.text), states[code]));
        streams += code;
        spacer.style.height = (html.length * rowH) + "px";
        if (stick) box.scrollTop = box.scrollHeight;
        drawn = [-1, -1];
        redraw(false);
        describe();
      });
      source.addEventListener("end", function () {
        source.close();
        live = false;
        load(0, null);
      });
    }

    // The first lines at once, then the whole log (a long one takes a moment to render).
    function ready(data) {
      fromHash();
      if (!data.terminal) follow();
    }
    measure();
    load(FIRST_LINES, function (data) {
      if (data.more) load(0, ready); else ready(data);
    });
  }

  // For tests (tests/e2e/test_web_ui.py compares it with the server's rendering).
  window.ConveyorUI = {ansiLine: function (line) { return ansiLine(String(line), Object.assign({}, PLAIN)); }};

  var page = document.body.getAttribute("data-page");
  if (page === "runs") initRuns();
  else if (page === "run") initRun();
  else if (page === "log") initLog();
})();
