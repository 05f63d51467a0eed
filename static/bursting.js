// Bursting and test sends on the page: the split column's suggestions follow
// the schedule form's report, and "Send a test" posts a schedule's next slot
// to one address (POST /api/schedules/<name>/test).
(function () {
  'use strict';

  function post(url, body) { return window.Nightshift.api('POST', url, body); }

  // The split column suggests the chosen report's columns.
  var report = document.getElementById('s-report');
  var split = document.getElementById('s-split_by');
  if (report && split) {
    var suggest = function () { split.setAttribute('list', 'split-columns-' + report.value); };
    report.addEventListener('change', suggest);
    suggest();
  }

  // The schedule rows are redrawn from the server: listen on the document.
  document.addEventListener('submit', function (event) {
    var form = event.target;
    if (!form.matches || !form.matches('form.test-send')) { return; }
    event.preventDefault();
    var input = form.querySelector('[data-field="to"]');
    var error = document.getElementById(input.id + '-error');
    var status = form.querySelector('.form-status');
    var button = form.querySelector('button');
    var name = form.getAttribute('data-name');
    input.removeAttribute('aria-invalid');
    error.hidden = true;
    error.textContent = '';
    status.textContent = '';
    button.disabled = true;
    post('/api/schedules/' + encodeURIComponent(name) + '/test', {to: input.value.trim()})
      .then(function (result) {
        button.disabled = false;
        if (!result.ok) {
          var data = result.data || {};
          error.textContent = data.message || ('the server answered ' + result.status);
          error.hidden = false;
          input.setAttribute('aria-invalid', 'true');
          input.focus();
          return;
        }
        status.textContent = 'Test run #' + result.data.id + ' queued: the next slot of ' +
          name + ', to ' + input.value.trim() + ' only. Follow it under Recent runs.';
        // The runs table refreshes itself when the page becomes visible.
        document.dispatchEvent(new Event('visibilitychange'));
      });
  });
})();
