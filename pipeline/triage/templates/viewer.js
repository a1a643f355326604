(function () {
  "use strict";
  var run = window.TRIAGE_RUN;  // ../worklist.js: run details and the worklist order
  var here = decodeURIComponent(location.pathname.split("/").slice(-2, -1)[0] || "");
  function link(id, label, name) {
    var el = document.getElementById(id);
    if (!el || !name) return;
    var a = document.createElement("a");
    a.href = "../" + encodeURIComponent(name) + "/report.html";
    a.textContent = label;
    el.appendChild(a);
  }
  if (run) {
    var i = run.order.indexOf(here);
    if (i >= 0) { link("nav-prev", "\u2190 previous patient", run.order[i - 1]); link("nav-next", "next patient \u2192", run.order[i + 1]); }
    var info = document.getElementById("run-info");
    if (info) info.textContent = "Run " + run.date + " \u00b7 archive " + run.archive + " \u00b7 slices segmented when P(tumour) > " + run.p_tumour_cut + " (" + run.threshold_source + ")";
  }
  var node = document.getElementById("viewer-data");
  if (!node) return;
  var D = JSON.parse(node.textContent);
  var n = D.images.length, cur = D.start, zoom = 2;
  var canvas = document.getElementById("v-canvas"), ctx = canvas.getContext("2d");
  var range = document.getElementById("v-range"), caption = document.getElementById("v-caption");
  var showPred = document.getElementById("v-pred"), showGt = document.getElementById("v-gt");
  var rows = document.querySelectorAll("#slice-table tr[data-i]");
  var imgs = D.images.map(function (b) { var im = new Image(); im.src = "data:image/jpeg;base64," + b; return im; });
  function outline(polys, colour, s, dash) {
    ctx.strokeStyle = colour; ctx.lineWidth = Math.max(1, zoom); ctx.setLineDash(dash);
    polys.forEach(function (p) {
      ctx.beginPath();
      for (var k = 0; k < p.length; k += 2) ctx[k ? "lineTo" : "moveTo"]((p[k] + 0.5) * s, (p[k + 1] + 0.5) * s);
      ctx.closePath(); ctx.stroke();
    });
  }
  function draw() {
    var s = D.slices[cur], im = imgs[cur];
    canvas.width = D.w * zoom; canvas.height = D.h * zoom;
    ctx.imageSmoothingEnabled = false;
    if (im.complete) ctx.drawImage(im, 0, 0, canvas.width, canvas.height); else im.onload = draw;
    if (D.gt && (!showGt || showGt.checked)) outline(D.gt[cur], "#00dcff", zoom, [3 * zoom, 2 * zoom]);
    if (!showPred || showPred.checked) outline(D.pred[cur], "#ff3030", zoom, []);
    var p = s.p_tumour === null ? "\u2014" : s.p_tumour.toFixed(3);
    caption.textContent = "slice " + s.slice + " (" + (cur + 1) + "/" + n + ") \u00b7 P(tumour) " + p + " \u00b7 " +
      (s.route === "segmented" ? "segmented, " + s.mask_pixels + " px predicted" : "gate: normal, not segmented") +
      (s.gt_pixels === null || s.gt_pixels === undefined ? "" : " \u00b7 ground truth " + s.gt_pixels + " px");
    document.getElementById("v-zoom").textContent = zoom + "\u00d7";
    range.value = cur;
    rows.forEach(function (r) { r.classList.toggle("current", +r.dataset.i === cur); });
  }
  function go(i) { cur = Math.max(0, Math.min(n - 1, i)); draw(); }
  function zoomBy(d) { zoom = Math.max(1, Math.min(6, zoom + d)); draw(); }
  range.addEventListener("input", function () { go(+range.value); });
  document.getElementById("v-prev").onclick = function () { go(cur - 1); };
  document.getElementById("v-next").onclick = function () { go(cur + 1); };
  document.getElementById("v-zin").onclick = function () { zoomBy(1); };
  document.getElementById("v-zout").onclick = function () { zoomBy(-1); };
  [showPred, showGt].forEach(function (c) { if (c) c.addEventListener("change", draw); });
  rows.forEach(function (r) { r.addEventListener("click", function () { go(+r.dataset.i); }); });
  canvas.addEventListener("wheel", function (e) { e.preventDefault(); go(cur + (e.deltaY > 0 ? 1 : -1)); }, { passive: false });
  document.addEventListener("keydown", function (e) {
    var k = e.key;
    if (k === "ArrowDown" || k === "j") { go(cur + 1); e.preventDefault(); }
    else if (k === "ArrowUp" || k === "k") { go(cur - 1); e.preventDefault(); }
    else if (k === "+" || k === "=") zoomBy(1);
    else if (k === "-") zoomBy(-1);
    else if (k === "p" && showPred) { showPred.checked = !showPred.checked; draw(); }
    else if (k === "g" && showGt) { showGt.checked = !showGt.checked; draw(); }
  });
  draw();
})();
