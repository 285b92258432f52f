/* Part of "Imagen from scratch" (not from npm).
 * Images that ipywidgets draw from the saved widget state (e.g. a matplotlib figure inside an
 * `interact` output) get no alt attribute: the widget renderer creates a bare <img>, and myst-nb's
 * cell metadata {"mystnb": {"image": {"alt": ...}}} only reaches static outputs. This gives each
 * such image an alt text from the widget's current settings and the paragraph that introduces the
 * cell in the book (which describes what the figure shows). Loaded with the widget manager (see
 * nb_ipywidgets_js in _config.yml). */
(function () {
  function intro(el) {
    var cell = el.closest(".cell") || el.closest(".widget-subarea") || el;
    for (var n = cell.previousElementSibling; n; n = n.previousElementSibling) {
      if (n.matches("p") || n.querySelector("p")) {
        var t = (n.matches("p") ? n : n.querySelector("p")).textContent.replace(/\s+/g, " ").trim();
        var m = t.match(/^.*?[.!?](\s|$)/);
        t = (m ? m[0] : t).trim();
        return t.length > 240 ? t.slice(0, 237) + "..." : t;
      }
    }
    return "";
  }
  function settings(el) {
    var box = el.closest(".widget-interact") || el.closest(".jupyter-widgets.widget-container");
    if (!box) return "";
    var out = [];
    box.querySelectorAll(".widget-inline-hbox, .widget-hbox").forEach(function (row) {
      var label = row.querySelector(".widget-label");
      var value = row.querySelector(".widget-readout, .widget-toggle-button.mod-active, select, input");
      if (!label || !value) return;
      var v = value.value !== undefined && value.tagName !== "BUTTON" ? value.value : value.textContent;
      if (label.textContent.trim() && String(v).trim()) out.push(label.textContent.trim() + " = " + String(v).trim());
    });
    return out.join(", ");
  }
  function fix(root) {
    (root.querySelectorAll ? root : document).querySelectorAll(".jupyter-widgets img:not([alt]), .jupyter-widgets img[alt='']")
      .forEach(function (img) {
        var s = settings(img), t = intro(img);
        img.alt = "Figure drawn by the interactive widget" + (s ? " (" + s + ")" : "") + (t ? ": " + t : "");
      });
  }
  function start() {
    fix(document);
    new MutationObserver(function () { fix(document); })
      .observe(document.body, {childList: true, subtree: true});
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
