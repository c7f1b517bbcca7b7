/* brainharness leaderboard: sortable columns and row filters. Hand-written, no dependencies,
   works from file:// (no fetch, no modules). Tables marked class="sortable" sort on a header
   click (numbers by the cell's data-v, text otherwise; missing cells always last); selects
   marked data-facet hide the rows whose data-<facet> differs. */
(function () {
  "use strict";

  function cellKey(row, col) {
    var td = row.cells[col];
    if (!td) return { missing: true };
    var v = td.getAttribute("data-v");
    if (v !== null) {
      if (v === "") return { missing: true };
      return { num: parseFloat(v) };
    }
    var t = td.textContent.trim();
    return t === "" || t === "\u2014" ? { missing: true } : { text: t.toLowerCase() };
  }

  function compare(a, b) {
    if (a.num !== undefined && b.num !== undefined) return a.num - b.num;
    var x = a.text !== undefined ? a.text : String(a.num), y = b.text !== undefined ? b.text : String(b.num);
    return x < y ? -1 : x > y ? 1 : 0;
  }

  function sortBy(table, th) {
    var col = th.cellIndex, body = table.tBodies[0];
    var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
    var heads = table.tHead.rows[0].cells;
    for (var i = 0; i < heads.length; i++) heads[i].removeAttribute("aria-sort");
    th.setAttribute("aria-sort", dir);
    var rows = Array.prototype.slice.call(body.rows).map(function (r, i) {
      return { row: r, key: cellKey(r, col), i: i };
    });
    rows.sort(function (a, b) {
      if (a.key.missing || b.key.missing) {
        return a.key.missing && b.key.missing ? a.i - b.i : a.key.missing ? 1 : -1;
      }
      var c = compare(a.key, b.key);
      return c !== 0 ? (dir === "ascending" ? c : -c) : a.i - b.i;
    });
    rows.forEach(function (r) { body.appendChild(r.row); });
  }

  function applyFilters() {
    var selects = document.querySelectorAll("select[data-facet]");
    var wanted = {};
    selects.forEach(function (s) { if (s.value !== "") wanted[s.getAttribute("data-facet")] = s.value; });
    document.querySelectorAll("table.filterable").forEach(function (table) {
      var shown = 0, rows = table.tBodies[0].rows;
      for (var i = 0; i < rows.length; i++) {
        var ok = true;
        for (var f in wanted) {
          if (rows[i].getAttribute("data-" + f) !== wanted[f]) { ok = false; break; }
        }
        rows[i].hidden = !ok;
        if (ok) shown++;
      }
      var count = document.getElementById(table.id + "-count");
      if (count) count.textContent = shown + " of " + rows.length + " rows shown";
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("table.sortable").forEach(function (table) {
      var heads = table.tHead.rows[0].cells;
      for (var i = 0; i < heads.length; i++) {
        var th = heads[i];
        th.tabIndex = 0;
        th.title = "sort by this column";
        th.addEventListener("click", function () { sortBy(table, this); });
        th.addEventListener("keydown", function (e) {
          if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, this); }
        });
      }
    });
    document.querySelectorAll("select[data-facet]").forEach(function (s) {
      s.addEventListener("change", applyFilters);
    });
    var reset = document.getElementById("reset-filters");
    if (reset) reset.addEventListener("click", function () {
      document.querySelectorAll("select[data-facet]").forEach(function (s) { s.value = ""; });
      applyFilters();
    });
    applyFilters();
  });
})();
