// The notification log on the page: loaded once the page is up, then every
// half minute while the tab is shown (nothing else on the page waits for it).
(function () {
  'use strict';
  var body = document.getElementById('notifications-body');
  if (!body) { return; }
  var last = '';

  function refresh() {
    if (document.hidden) { return; }
    fetch(body.getAttribute('data-source'), {credentials: 'same-origin'})
      .then(function (res) { return res.ok ? res.text() : null; })
      .then(function (html) {
        if (html !== null && html !== last) {
          body.innerHTML = html;
          last = html;
        }
      }, function () { /* the next refresh tries again */ });
  }

  refresh();
  setInterval(refresh, 30000);
  document.addEventListener('visibilitychange', refresh);
}());
