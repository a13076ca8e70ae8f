(function () {
  "use strict";
  var LABELS = { harmful: 1, safe: 1, unscored: 1 };

  function text(tag, value, cls) {
    var el = document.createElement(tag);
    if (value !== undefined && value !== null) { el.textContent = String(value); }
    if (cls) { el.className = cls; }
    return el;
  }

  // ---------------------------------------------------------------- sortable tables
  function cellValue(row, index) {
    var cell = row.cells[index];
    if (!cell) { return ""; }
    var v = cell.getAttribute("data-sort");
    return v !== null ? v : cell.textContent.trim();
  }

  var NUMBER = /^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$/;

  function compare(a, b) {
    if (NUMBER.test(a) && NUMBER.test(b)) { return parseFloat(a) - parseFloat(b); }
    return a.localeCompare(b, undefined, { numeric: true });
  }

  function makeSortable(table) {
    var heads = table.querySelectorAll("thead tr:last-child th");
    Array.prototype.forEach.call(heads, function (th) {
      th.addEventListener("click", function () {
        var index = th.cellIndex;
        var asc = !th.classList.contains("sorted-asc");
        Array.prototype.forEach.call(heads, function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
        th.classList.add(asc ? "sorted-asc" : "sorted-desc");
        Array.prototype.forEach.call(table.tBodies, function (body) {
          var rows = Array.prototype.slice.call(body.rows);
          rows.sort(function (r1, r2) {
            var a = cellValue(r1, index), b = cellValue(r2, index);
            if (a === "" || b === "") { return (a === "") - (b === ""); }  // empty cells last either way
            return asc ? compare(a, b) : compare(b, a);
          });
          rows.forEach(function (r) { body.appendChild(r); });
        });
      });
    });
  }

  // ---------------------------------------------------------------- row filters
  function bindFilter(input) {
    var table = document.getElementById(input.getAttribute("data-filter"));
    if (!table) { return; }
    input.addEventListener("input", function () {
      var q = input.value.toLowerCase();
      Array.prototype.forEach.call(table.tBodies, function (body) {
        Array.prototype.forEach.call(body.rows, function (row) {
          row.hidden = q !== "" && row.textContent.toLowerCase().indexOf(q) < 0;
        });
      });
    });
  }

  // ---------------------------------------------------------------- category settings
  function bindSettingSelect(select) {
    var table = document.getElementById(select.getAttribute("data-block"));
    if (!table) { return; }
    function show() {
      Array.prototype.forEach.call(table.tBodies, function (body) {
        body.hidden = body.getAttribute("data-setting") !== select.value;
      });
    }
    select.addEventListener("change", show);
    show();
  }

  // ---------------------------------------------------------------- figure downloads (SVG)
  function bindDownload(button) {
    button.addEventListener("click", function () {
      var figure = button.closest("figure");
      var svg = figure ? figure.querySelector("svg") : null;
      if (!svg) { return; }
      var source = new XMLSerializer().serializeToString(svg);
      var url = URL.createObjectURL(new Blob([source], { type: "image/svg+xml" }));
      var link = document.createElement("a");
      link.download = (button.getAttribute("data-name") || "figure") + ".svg";
      link.href = url;
      document.body.appendChild(link);
      link.click();
      document.body.removeChild(link);
      window.setTimeout(function () { URL.revokeObjectURL(url); }, 1000);
    });
  }

  // ---------------------------------------------------------------- sample browser
  var DATA = null;
  var state = { ids: [], limit: 200 };

  function loadData() {
    var node = document.getElementById("report-data");
    DATA = node ? JSON.parse(node.textContent) : { cells: [], examples: [], samples: [] };
  }

  function cellLabel(cell) {
    var parts = [cell.run, cell.model, cell.dataset];
    if (cell.attack) { parts.push(cell.attack); }
    parts.push(cell.setting);
    return parts.join(" · ");
  }

  function verdictNode(judge, verdict) {
    var wrap = document.createElement("div");
    var label = LABELS[verdict[0]] ? verdict[0] : "unscored";
    wrap.appendChild(text("span", judge + ": "));
    wrap.appendChild(text("span", verdict[0], "v-" + label));
    if (verdict[1]) { wrap.appendChild(text("div", verdict[1], "reason")); }
    return wrap;
  }

  function sampleLabel(s) {
    if (s[6]) { return "skipped"; }
    var v = s[4], keys = Object.keys(v);
    if (keys.length) { return v[keys[0]][0]; }
    return "";
  }

  function renderSamples() {
    var panel = document.getElementById("sample-panel");
    var body = document.getElementById("sample-rows");
    var title = document.getElementById("sample-title");
    var status = document.getElementById("sample-status");
    if (!panel || !body) { return; }
    while (body.firstChild) { body.removeChild(body.firstChild); }
    if (!state.ids.length) { panel.hidden = true; return; }
    panel.hidden = false;
    var wanted = {};
    state.ids.forEach(function (id) { wanted[id] = true; });
    var names = state.ids.filter(function (id) { return DATA.cells[id]; })
      .map(function (id) { return cellLabel(DATA.cells[id]); });
    title.textContent = names.length > 3 ? names.slice(0, 3).join(" | ") + " | … (" + names.length + " settings)"
      : names.join(" | ");
    var verdict = document.getElementById("sample-verdict").value;
    var query = document.getElementById("sample-search").value.toLowerCase();
    var shown = 0, matched = 0;
    DATA.samples.forEach(function (s) {
      if (!wanted[s[0]]) { return; }
      var ex = DATA.examples[s[1]];
      var label = sampleLabel(s);
      if (verdict && label !== verdict) { return; }
      var hay = (ex[0] + " " + ex[1] + " " + ex[2] + " " + s[3] + " " + (s[5] || "")).toLowerCase();
      if (query && hay.indexOf(query) < 0) { return; }
      matched += 1;
      if (shown >= state.limit) { return; }
      shown += 1;
      var tr = document.createElement("tr");
      var cell = DATA.cells[s[0]];
      var where = text("td", cellLabel(cell));
      where.appendChild(text("div", "sample " + s[2], "reason"));
      tr.appendChild(where);
      var exTd = text("td", ex[2]);
      exTd.appendChild(text("div", ex[1], "reason"));
      tr.appendChild(exTd);
      tr.appendChild(text("td", ex[0], "text"));
      tr.appendChild(text("td", s[3], "text"));
      var vTd = document.createElement("td");
      if (s[6]) {
        vTd.appendChild(text("span", "skipped", "v-skipped"));
        vTd.appendChild(text("div", s[6], "reason"));
      }
      Object.keys(s[4]).forEach(function (j) { vTd.appendChild(verdictNode(j, s[4][j])); });
      if (s[7]) {
        Object.keys(s[7]).forEach(function (m) {
          vTd.appendChild(text("div", m + " = " + (s[7][m] === null ? "unscored" : s[7][m])));
        });
      }
      tr.appendChild(vTd);
      if (DATA.show_completions) {
        tr.appendChild(text("td", s[5] === null ? "" : s[5], "text"));
      } else {
        tr.appendChild(text("td", "hidden (build with --show-completions)", "hidden-text"));
      }
      body.appendChild(tr);
    });
    var dropped = 0;
    state.ids.forEach(function (id) { dropped += DATA.truncated[String(id)] || 0; });
    status.textContent = "showing " + shown + " of " + matched + " matching samples" +
      (dropped ? " (" + dropped + " more not included in this report: --samples-per-cell)" : "");
    document.getElementById("sample-more").hidden = shown >= matched;
  }

  function readHash() {
    var m = /(?:^#|&)samples=([0-9,]+)/.exec(window.location.hash);
    state.ids = m ? m[1].split(",").filter(Boolean).map(function (x) { return parseInt(x, 10); }) : [];
    state.limit = 200;
    renderSamples();
    if (state.ids.length) {
      var panel = document.getElementById("sample-panel");
      if (panel && panel.scrollIntoView) { panel.scrollIntoView(); }
    }
  }

  function init() {
    loadData();
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), makeSortable);
    Array.prototype.forEach.call(document.querySelectorAll("input[data-filter]"), bindFilter);
    Array.prototype.forEach.call(document.querySelectorAll("select[data-block]"), bindSettingSelect);
    Array.prototype.forEach.call(document.querySelectorAll("button.dl"), bindDownload);
    ["sample-verdict", "sample-search"].forEach(function (id) {
      var el = document.getElementById(id);
      if (el) { el.addEventListener("input", function () { state.limit = 200; renderSamples(); }); }
    });
    var more = document.getElementById("sample-more");
    if (more) { more.addEventListener("click", function () { state.limit += 1000; renderSamples(); }); }
    var close = document.getElementById("sample-close");
    if (close) { close.addEventListener("click", function () { window.location.hash = "samples-closed"; }); }
    window.addEventListener("hashchange", readHash);
    readHash();
    document.body.setAttribute("data-ready", "1");
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
}());
