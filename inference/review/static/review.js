// Loupe review: keyboard shortcuts and the heatmap opacity slider (no dependencies).
// Item page: D = defect, F = false alarm, Left/Right = previous/next, U or Ctrl+Z = undo my last verdict.
// Queue page: Left/Right = previous/next page.
(function () {
  "use strict";

  var NON_TEXT_INPUTS = ["range", "checkbox", "radio", "button", "submit", "reset"];

  // Text fields get every key; a slider or checkbox keeps its arrows but lets D/F/U through.
  function typing(target) {
    var tag = target && target.tagName;
    if (tag === "INPUT") { return NON_TEXT_INPUTS.indexOf(target.type) < 0; }
    return tag === "TEXTAREA" || tag === "SELECT" || Boolean(target && target.isContentEditable);
  }

  function ownsArrows(target) {
    return Boolean(target && target.tagName === "INPUT" && NON_TEXT_INPUTS.indexOf(target.type) >= 0);
  }

  function follow(id) {
    var link = document.getElementById(id);
    if (link) { window.location.href = link.href; return true; }
    return false;
  }

  function submitWith(buttonId) {
    var button = document.getElementById(buttonId);
    if (!button || !button.form) { return false; }
    if (button.form.requestSubmit) { button.form.requestSubmit(button); } else { button.click(); }
    return true;
  }

  function submitForm(id) {
    var form = document.getElementById(id);
    if (!form) { return false; }
    if (form.requestSubmit) { form.requestSubmit(); } else { form.submit(); }
    return true;
  }

  var busy = false; // one verdict per key press: ignore repeats while the page is leaving
  window.addEventListener("pageshow", function () { busy = false; }); // back/forward cache

  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.metaKey || busy) { return; }
    if (event.key === "Escape" && event.target && event.target.blur) { event.target.blur(); return; }
    if (typing(event.target)) { return; }
    var key = event.key;
    var done = false;
    if ((key === "ArrowLeft" || key === "ArrowRight") && ownsArrows(event.target)) { return; }
    if (event.ctrlKey) {
      if (key === "z" || key === "Z") { done = submitForm("undo-form"); }
    } else if (key === "d" || key === "D") {
      done = submitWith("btn-defect");
    } else if (key === "f" || key === "F") {
      done = submitWith("btn-false-alarm");
    } else if (key === "u" || key === "U") {
      done = submitForm("undo-form");
    } else if (key === "ArrowLeft") {
      done = follow("prev-link") || follow("page-prev");
    } else if (key === "ArrowRight") {
      done = follow("next-link") || follow("page-next");
    }
    if (done) { event.preventDefault(); busy = true; }
  });

  document.addEventListener("DOMContentLoaded", function () {
    var slider = document.getElementById("opacity");
    var heatmap = document.getElementById("heatmap");
    var shown = document.getElementById("opacity-value");
    if (slider && heatmap) {
      var stored = window.localStorage && window.localStorage.getItem("loupe-heatmap-opacity");
      if (stored !== null && stored !== undefined) { slider.value = stored; }
      var apply = function () {
        heatmap.style.opacity = String(slider.value / 100);
        if (shown) { shown.textContent = slider.value + "%"; }
        if (window.localStorage) { window.localStorage.setItem("loupe-heatmap-opacity", slider.value); }
      };
      slider.addEventListener("input", apply);
      apply();
    }
    var toggle = document.getElementById("show-outline");
    var outline = document.getElementById("outline");
    if (toggle && outline) {
      toggle.addEventListener("change", function () { outline.hidden = !toggle.checked; });
    }
    // whole queue rows are clickable
    var rows = document.querySelectorAll("tr[data-href]");
    Array.prototype.forEach.call(rows, function (row) {
      row.addEventListener("click", function (event) {
        if (event.target.closest("a")) { return; }
        window.location.href = row.getAttribute("data-href");
      });
    });
  });
}());
