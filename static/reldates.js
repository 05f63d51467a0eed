// Relative dates on the page: while a schedule is written, show the next
// slot and the values its parameters will have then (POST
// /api/schedule-preview, the server's own resolution, never a copy of it).
(function () {
  'use strict';

  var form = document.getElementById('schedule-form');
  var box = document.getElementById('s-preview');
  var editor = document.getElementById('schedule-editor');
  if (!form || !box || !editor) { return; }

  var timer = null;
  var asked = 0;  // a slow older answer must not replace a newer one

  function field(name) {
    var found = null;
    form.querySelectorAll('[data-field]').forEach(function (el) {
      if (!found && el.getAttribute('data-field') === name && !el.closest('[disabled]')) {
        found = el;
      }
    });
    return found;
  }

  function params() {
    var values = {};
    form.querySelectorAll('[data-field^="params."]').forEach(function (el) {
      if (el.closest('[disabled]') || el.value === '') { return; }
      values[el.getAttribute('data-field').slice(7)] = el.value;
    });
    return values;
  }

  function show(text, bad) {
    box.textContent = text;
    box.classList.toggle('bad', !!bad);
  }

  // "2025-03-31T07:00:00+01:00" -> "2025-03-31 07:00": the slot in the
  // schedule's own timezone, as the server worked it out.
  function wall(iso) {
    return iso.slice(0, 10) + ' ' + iso.slice(11, 16);
  }

  function preview() {
    var cron = field('cron'), report = field('report'), zone = field('timezone');
    if (!cron || !report || !cron.value.trim()) {
      show('');
      return;
    }
    var ticket = ++asked;
    var body = {report: report.value, params: params(), cron: cron.value.trim(),
                timezone: zone ? zone.value.trim() : ''};
    fetch('/api/schedule-preview', {
      method: 'POST', credentials: 'same-origin',
      headers: {'Accept': 'application/json', 'Content-Type': 'application/json'},
      body: JSON.stringify(body)
    }).then(function (res) {
      return res.json().then(function (data) { return {ok: res.ok, data: data}; });
    }).then(function (result) {
      if (ticket !== asked) { return; }
      var data = result.data || {};
      if (!result.ok) {
        show('No preview: ' + (data.field ? data.field + ': ' : '') + (data.message || ''), true);
        return;
      }
      show('Next run ' + wall(data.slot_local) + ' (' + data.timezone + ') with ' + data.text);
    }, function () { /* the next change tries again */ });
  }

  function later() {
    clearTimeout(timer);
    timer = setTimeout(preview, 300);
  }

  form.addEventListener('input', later);
  form.addEventListener('change', later);
  // The editor is filled by app.js when it opens: preview what it shows.
  new MutationObserver(function () {
    if (!editor.hidden) { later(); }
  }).observe(editor, {attributes: true, attributeFilter: ['hidden']});
})();
