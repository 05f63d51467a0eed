// Acting on runs from the page: cancel, re-run, backfill a schedule. Each
// click is one call to the JSON API (control.py behind it); what it answered
// is shown above the runs table and read out by screen readers.
(function () {
  'use strict';

  // Every write sends JSON, an empty object when there is nothing to say.
  function post(url, body) { return window.Nightshift.api('POST', url, body || {}); }

  // One visible line above the runs table, kept across the table's refreshes.
  function say(text, bad) {
    var box = document.getElementById('control-status');
    if (!box) {
      var runs = document.getElementById('runs-title');
      if (!runs) { return; }
      box = document.createElement('p');
      box.id = 'control-status';
      box.className = 'form-status';
      box.setAttribute('role', 'status');
      box.setAttribute('aria-live', 'polite');
      runs.parentNode.insertBefore(box, runs.nextSibling);
    }
    box.textContent = text;
    box.classList.toggle('bad', !!bad);
  }

  function refreshRuns() {
    document.dispatchEvent(new CustomEvent('nightshift:refresh-runs'));
  }

  function failure(result) {
    var data = result.data || {};
    return (data.field ? data.field + ': ' : '') + (data.message || 'that did not work');
  }

  document.addEventListener('click', function (event) {
    var button = event.target.closest('button[data-control]');
    if (!button) { return; }
    var id = button.getAttribute('data-control-run');
    var action = button.getAttribute('data-control');
    if (action === 'cancel' && !window.confirm('Cancel run #' + id + '? Nothing will be sent.')) {
      return;
    }
    button.disabled = true;
    post('/api/runs/' + encodeURIComponent(id) + '/' + action).then(function (result) {
      button.disabled = false;
      if (!result.ok) {
        say('Run #' + id + ': ' + failure(result), true);
        return;
      }
      say(action === 'cancel' ? 'Run #' + id + ' cancelled: nothing will be sent.'
                              : 'Run #' + id + ' runs again as run #' + result.data.id + '.');
      refreshRuns();
    });
  });

  document.addEventListener('submit', function (event) {
    var form = event.target.closest('form.backfill-form');
    if (!form) { return; }
    event.preventDefault();
    var name = form.getAttribute('data-backfill');
    var body = {from: form.elements.from.value, to: form.elements.to.value};
    var button = form.querySelector('button');
    button.disabled = true;
    post('/api/schedules/' + encodeURIComponent(name) + '/backfill', body)
      .then(function (result) {
        button.disabled = false;
        if (!result.ok) {
          var field = form.elements[(result.data || {}).field];
          if (field) { field.setAttribute('aria-invalid', 'true'); field.focus(); }
          say('Backfill of ' + name + ': ' + failure(result), true);
          return;
        }
        Array.prototype.forEach.call(form.elements, function (el) {
          el.removeAttribute('aria-invalid');
        });
        var made = result.data.created, left = result.data.skipped;
        var text = 'Backfill of ' + name + ': ' + made.length + ' run' +
          (made.length === 1 ? '' : 's') + ' queued' +
          (made.length ? ' (#' + made.map(function (r) { return r.id; }).join(', #') + ')' : '');
        if (left.length) {
          text += '; ' + left.length + ' slot' + (left.length === 1 ? '' : 's') + ' left: ' +
            left.map(function (s) { return s.slot_at.slice(0, 16).replace('T', ' ') +
                                           ' UTC, ' + s.message; }).join('; ');
        }
        say(text + '.');
        refreshRuns();
      });
  });
})();
