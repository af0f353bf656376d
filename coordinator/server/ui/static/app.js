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
 *   running job's new lines come over /api/v1/runs/RUN/jobs/JOB/log?follow=1.
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
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
    });
  }

  // Escape sequences (CSI, OSC, other ESC) and control characters but tab.
  var ANSI = /\x1b\[[0-?]*[ -\/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[PX^_][^\x1b]*(?:\x1b\\)?|\x1b[@-Z\\-_]?|[\x00-\x08\x0b-\x1f\x7f\x9b]/g;
  function stripAnsi(text) { return String(text).replace(ANSI, ""); }

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
      var seen = 0;
      var source = new EventSource(box.getAttribute("data-follow-url"));
      source.addEventListener("open", function () { seen = 0; });  // a (re)connection replays from line 1
      source.addEventListener("line", function (ev) {
        seen += 1;
        if (seen <= html.length) return;
        var data = JSON.parse(ev.data);
        var stick = atBottom();
        // A live line is shown as plain text (ANSI codes dropped) until the job ends and the
        // server's coloured rendering replaces the whole log.
        html.push(escapeHtml(stripAnsi(data.text)));
        streams += STREAMS[data.stream] || "o";
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

  var page = document.body.getAttribute("data-page");
  if (page === "runs") initRuns();
  else if (page === "run") initRun();
  else if (page === "log") initLog();
})();
