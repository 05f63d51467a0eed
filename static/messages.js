// The "Message" section of the report and schedule forms: a preview of the
// next message, rendered by the server from the templates as typed.
(function () {
  'use strict';

  function valuesOf(form) {
    var body = {params: {}};
    form.querySelectorAll('[data-field]').forEach(function (el) {
      if (el.closest('[disabled]') || el.value === '') { return; }
      var name = el.getAttribute('data-field');
      if (name.indexOf('params.') === 0) {
        body.params[name.slice(7)] = el.value;
      } else if (el.hasAttribute('data-extra') || name === 'cron' || name === 'timezone' ||
                 name === 'report') {
        body[name] = el.value;
      }
    });
    if (form.hasAttribute('data-report')) { body.report = form.getAttribute('data-report'); }
    return body;
  }

  function show(box, selector, text) {
    var el = box.querySelector(selector);
    el.textContent = text || '';
    el.hidden = !text;
  }

  function preview(section) {
    var form = section.closest('form');
    var box = section.querySelector('.message-preview');
    var body = valuesOf(form);
    box.hidden = false;
    show(box, '.preview-error', '');
    box.querySelector('.preview-body').textContent = 'Rendering…';
    fetch('/api/messages/preview', {
      method: 'POST', credentials: 'same-origin',
      headers: {'Content-Type': 'application/json', 'Accept': 'application/json'},
      body: JSON.stringify(body)
    }).then(function (res) {
      return res.json().then(function (data) { return {ok: res.ok, data: data}; });
    }).then(function (result) {
      var data = result.data || {};
      if (!result.ok) {
        box.querySelector('.preview-subject').textContent = '';
        box.querySelector('.preview-name').textContent = '';
        box.querySelector('.preview-body').textContent = '';
        show(box, '.preview-notice', '');
        show(box, '.preview-error', (data.field ? data.field + ': ' : '') +
             (data.message || 'the preview could not be made'));
        return;
      }
      box.querySelector('.preview-subject').textContent = data.subject;
      box.querySelector('.preview-name').textContent = data.attachment_name;
      box.querySelector('.preview-body').textContent = data.body;
      var notice = '';
      if (data.send_rule === 'rows') {
        notice = 'With no rows nothing is sent: the run is recorded as skipped.';
      } else if (data.send_rule === 'notice') {
        notice = 'With no rows a short notice goes instead: “' + data.notice_subject + '”.';
      }
      show(box, '.preview-notice', (notice ? notice + ' ' : '') +
           'Sample values: 1,234 rows, run #0, the date ' + data.date + '.');
    }, function () {
      show(box, '.preview-error', 'the server is not answering; try again');
    });
  }

  document.addEventListener('click', function (event) {
    var button = event.target.closest('button[data-action="preview-message"]');
    if (!button) { return; }
    event.preventDefault();
    preview(button.closest('.message-fields'));
  });
})();
