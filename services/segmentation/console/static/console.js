/* The console's only script: draw the charts the server described, follow chart clicks, keep the
   campaign form's audience count live, ask before dangerous actions, and make a double click submit once. */
(function () {
  "use strict";
  var charts = {};
  window.consoleCharts = charts;

  function fillTemplate(template, data) {
    var missing = false;
    var url = template.replace(/\{(\w+)\}/g, function (_match, name) {
      if (!data || data[name] === undefined || data[name] === null) { missing = true; return ""; }
      return encodeURIComponent(data[name]);
    });
    return missing ? null : url;
  }

  function drawCharts() {
    var locale = document.body.dataset.locale === "zh_CN" ? "ZH" : "EN";
    document.querySelectorAll(".chart").forEach(function (element) {
      var source = document.getElementById(element.id + "-option");
      if (!source) { return; }
      var chart = echarts.init(element, null, { renderer: "canvas", locale: locale });
      var option = JSON.parse(source.textContent);
      option.animation = false;
      chart.setOption(option);
      charts[element.dataset.chart] = chart;
      if (element.dataset.click) {
        chart.on("click", function (params) {
          var url = fillTemplate(element.dataset.click, params.data);
          if (url) { window.location.href = url; }
        });
      }
    });
    window.addEventListener("resize", function () {
      Object.keys(charts).forEach(function (name) { charts[name].resize(); });
    });
  }

  function liveCount(form) {
    var output = document.getElementById("live-count");
    var timer = null;
    function refresh() {
      var params = new URLSearchParams();
      form.querySelectorAll("input[type=checkbox]:checked").forEach(function (box) { params.append(box.name, box.value); });
      if (!params.toString()) { params.append("lifecycle", "dormant"); }
      fetch(form.dataset.countUrl + "?" + params.toString(), { credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (body) { output.textContent = body ? String(body.count) : "?"; })
        .catch(function () { output.textContent = "?"; });
    }
    form.addEventListener("change", function () { clearTimeout(timer); timer = setTimeout(refresh, 150); });
    refresh();
  }

  function guardForms() {
    document.querySelectorAll("form[method=post]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) { event.preventDefault(); return; }
        // The Idempotency-Key already makes a second submit return the same campaign; this saves the round trip.
        if (form.dataset.submitted) { event.preventDefault(); return; }
        form.dataset.submitted = "1";
      });
    });
  }

  function reloadWhileBuilding() {
    var notice = document.getElementById("building");
    if (notice) { setTimeout(function () { window.location.reload(); }, 1000 * Number(notice.dataset.reloadSeconds || 3)); }
  }

  document.addEventListener("DOMContentLoaded", function () {
    drawCharts();
    var form = document.getElementById("win-back-form");
    if (form) { liveCount(form); }
    guardForms();
    reloadWhileBuilding();
  });
})();
