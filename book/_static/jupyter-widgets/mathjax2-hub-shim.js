/* Part of "Imagen from scratch" (not from npm).
 * @jupyter-widgets/controls typesets widget labels with the MathJax 2 call
 *   MathJax.Hub.Queue(["Typeset", MathJax.Hub, element])
 * whenever window.MathJax exists, but Sphinx loads MathJax 3, which has no MathJax.Hub: every
 * widget label then throws "Cannot read properties of undefined (reading 'Queue')".
 * This maps that one call onto MathJax 3's typesetPromise. Loaded before embed.js (see
 * nb_ipywidgets_js in _config.yml), it installs itself once the deferred MathJax 3 script has run. */
(function () {
  function install() {
    var mj = window.MathJax;
    if (!mj || !mj.version || mj.Hub) return;
    mj.Hub = {
      Queue: function () {
        Array.prototype.forEach.call(arguments, function (job) {
          if (!Array.isArray(job) || job[0] !== "Typeset" || !job[2]) return;
          var ready = (mj.startup && mj.startup.promise) || Promise.resolve();
          ready.then(function () { return mj.typesetPromise ? mj.typesetPromise([job[2]]) : null; })
               .catch(function (e) { console.warn("MathJax typeset of a widget label failed:", e); });
        });
      }
    };
  }
  document.addEventListener("DOMContentLoaded", install);
  window.addEventListener("load", install);
})();
