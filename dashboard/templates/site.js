// perfgate's charts: plotly.js over the JSON the page's data script pushed onto window.perfgateData.
// Every text from the store is escaped before plotly sees it (plotly reads a subset of HTML in labels), and
// a character that would act instead of show is written as its escape, as bench/escape.py `visible` does.
(function () {
  "use strict";
  var HIDDEN = /[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff\ufffe\uffff]/gu;  // u: a lone surrogate only
  var SHORT = { "\t": "\\t", "\n": "\\n", "\r": "\\r" };
  function visible(text) {
    return text.replace(HIDDEN, function (c) {
      var code = c.charCodeAt(0);
      return SHORT[c] || (code < 0x100 ? "\\x" + ("0" + code.toString(16)).slice(-2) : "\\u" + ("000" + code.toString(16)).slice(-4));
    });
  }
  function esc(text) {
    return visible(String(text === null || text === undefined ? "–" : text))
      .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }
  function fmt(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    return Math.abs(v) >= 1e6 ? v.toExponential(3) : v.toFixed(digits);
  }
  var RED = "#c62828";
  var config = { displaylogo: false, responsive: true, scrollZoom: false };

  function historyChart(payload, metric, el) {
    var spec = payload.series[metric];
    var traces = [];
    var digits = spec.unit === "bytes" ? 0 : 2;
    var n = spec.lines.length;
    spec.lines.forEach(function (line, i) {
      // builds measured in one run share its position: each line is dodged a little, so every point can be hovered
      var dx = n > 1 ? (i - (n - 1) / 2) * Math.min(0.3, 0.6 / n) : 0;
      var ok = { x: [], y: [], lo: [], hi: [], cd: [] };
      var bad = { x: [], cd: [] };
      line.x.forEach(function (x, j) {
        var ci = line.ci[j];
        var roof = line.roofline ? line.roofline[j] : null;
        var cd = [esc(line.build), esc(line.commit[j]), line.run[j], fmt(line.y[j], digits),
          ci === null || ci === undefined ? "" : " ± " + fmt(ci, digits), esc(line.status[j]), esc(line.date[j]),
          roof === null || roof === undefined ? "" : "<br>roofline " + fmt(roof, 0) + "%" + (roof > 100 ? " (measurement error)" : "")];
        if (line.ok[j] && line.y[j] !== null) {
          ok.x.push(x + dx); ok.y.push(line.y[j]); ok.cd.push(cd);
          ok.lo.push(ci === null || ci === undefined ? line.y[j] : line.y[j] - ci);
          ok.hi.push(ci === null || ci === undefined ? line.y[j] : line.y[j] + ci);
        } else if (!line.ok[j]) {
          bad.x.push(x + dx); bad.cd.push(cd);
        }
      });
      var hover = "<b>%{customdata[0]}</b> %{customdata[1]}<br>run %{customdata[2]} · %{customdata[6]}<br>" +
        "%{customdata[3]}%{customdata[4]} " + esc(spec.unit) + "<br>status %{customdata[5]}%{customdata[7]}<extra></extra>";
      var group = "line" + i;
      traces.push({ x: ok.x, y: ok.hi, mode: "lines", line: { width: 0 }, hoverinfo: "skip", showlegend: false, legendgroup: group });
      traces.push({ x: ok.x, y: ok.lo, mode: "lines", line: { width: 0 }, fill: "tonexty", fillcolor: "rgba(80,120,200,0.18)",
        hoverinfo: "skip", showlegend: false, legendgroup: group });
      traces.push({ x: ok.x, y: ok.y, customdata: ok.cd, mode: ok.x.length > 300 ? "lines" : "lines+markers",
        name: esc(line.build), legendgroup: group, hovertemplate: hover, meta: "ok" });
      if (bad.x.length) {
        traces.push({ x: bad.x, y: bad.x.map(function () { return 0; }), customdata: bad.cd, mode: "markers",
          marker: { symbol: "x", size: 11, color: RED }, name: esc(line.build) + ": failed load", legendgroup: group,
          hovertemplate: hover, meta: "failed" });
      }
    });
    var shapes = [], annotations = [];
    (payload.changes || []).forEach(function (c) {
      if (c.metric !== metric && c.kind !== "status") return;
      if (c.x_after === null || c.x_after === undefined) return;
      var x = c.x_before === null || c.x_before === undefined ? c.x_after - 0.5 : (c.x_before + c.x_after) / 2;
      shapes.push({ type: "line", x0: x, x1: x, yref: "paper", y0: 0, y1: 1, line: { color: RED, dash: "dash", width: 1.5 } });
      annotations.push({ x: x, yref: "paper", y: 1, showarrow: false, yanchor: "bottom", font: { color: RED, size: 11 },
        text: esc(c.kind === "status" ? "status change" : "shift " + (c.shift_pct > 0 ? "+" : "") + fmt(c.shift_pct, 1) + "%"),
        hovertext: esc(c.build_before) + " → " + esc(c.build_after) });
    });
    var layout = {
      margin: { t: 30, r: 20, b: 60, l: 70 }, hovermode: "closest", showlegend: true,
      xaxis: { tickvals: payload.ticks.x, ticktext: payload.ticks.text.map(esc), title: { text: "nightly" } },
      yaxis: { title: { text: esc(spec.unit) }, rangemode: "tozero" }, shapes: shapes, annotations: annotations
    };
    Plotly.newPlot(el, traces, layout, config).then(function () {
      el.setAttribute("data-ready", "1");
    });
    el.on("plotly_click", function (ev) {
      var p = ev.points && ev.points[0];
      if (p && p.customdata) window.location.href = "../run/" + p.customdata[2] + ".html";
    });
  }

  function compareChart(payload, el) {
    var models = [], seen = {};
    payload.rows.forEach(function (r) { if (!seen[r.model]) { seen[r.model] = 1; models.push(r.model); } });
    var traces = ["pp_ts", "tg_ts"].map(function (metric) {
      var rows = payload.rows.filter(function (r) { return r.metric === metric; });
      return {
        type: "scatter", mode: "markers", name: metric, x: rows.map(function (r) { return esc(r.model); }),
        y: rows.map(function (r) { return r.ratio; }),
        error_y: { type: "data", symmetric: false,
          array: rows.map(function (r) { return r.ci_high === null ? 0 : r.ci_high - r.ratio; }),
          arrayminus: rows.map(function (r) { return r.ci_low === null ? 0 : r.ratio - r.ci_low; }) },
        hovertemplate: "%{x}<br>" + metric + " ratio %{y:.3f}<extra></extra>"
      };
    });
    Plotly.newPlot(el, traces, {
      margin: { t: 30, r: 20, b: 80, l: 60 }, yaxis: { title: { text: "candidate / baseline" } },
      shapes: [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: 1, y1: 1, line: { color: "#888", width: 1 } }]
    }, config).then(function () { el.setAttribute("data-ready", "1"); });
  }

  // a history's points come in blocks of runs (one more nightly rewrites only the newest): joined here, in the
  // order the head names them, into one line per build (builds in the order they first appear)
  function joinBlocks(head, blocks) {
    var lines = [], byBuild = {};
    head.blocks.forEach(function (name) {
      (blocks[name] ? blocks[name].lines : []).forEach(function (part) {
        var line = byBuild[part.build];
        if (!line) {
          line = byBuild[part.build] = { build: part.build, x: [], status: [], ok: [], run: [], commit: [], date: [],
            y: {}, ci: {}, roofline: [] };
          lines.push(line);
        }
        ["x", "status", "ok", "run", "commit", "date", "roofline"].forEach(function (k) {
          Array.prototype.push.apply(line[k], part[k]);
        });
        ["y", "ci"].forEach(function (k) {
          Object.keys(part[k]).forEach(function (metric) {
            line[k][metric] = (line[k][metric] || []).concat(part[k][metric]);
          });
        });
      });
    });
    Object.keys(head.series).forEach(function (metric) {
      head.series[metric].lines = lines.map(function (line) {
        return { build: line.build, x: line.x, status: line.status, ok: line.ok, run: line.run, commit: line.commit,
          date: line.date, y: line.y[metric] || [], ci: line.ci[metric] || [],
          roofline: metric === "tg_ts" ? line.roofline : null };
      });
    });
    return head;
  }

  var blocks = {};
  (window.perfgateData || []).forEach(function (payload) {
    if (payload.chart === "history-block") blocks[payload.block] = payload;
  });
  (window.perfgateData || []).forEach(function (payload) {
    if (payload.chart === "history") {
      var joined = joinBlocks(payload, blocks);
      document.querySelectorAll(".chart[data-metric]").forEach(function (el) {
        historyChart(joined, el.getAttribute("data-metric"), el);
      });
    } else if (payload.chart === "compare") {
      var el = document.getElementById("chart-compare");
      if (el) compareChart(payload, el);
    }
  });
})();
