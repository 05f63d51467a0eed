// Relative dates on the page: a report card's date field shows what its
// relative date is now; while a schedule is written, the next slot and the
// values its parameters will have then (POST /api/schedule-preview). The
// server resolves them; this script never works dates out itself.
(function () {
  'use strict';

  // Report cards: beside a date field holding a relative date, the value it
  // has now (the server's answer to the download check).
  var FIXED = /^\d{4}-\d{2}-\d{2}/;

  function hintFor(input) {
    var id = input.id + '-resolved';
    var hint = document.getElementById(id);
    if (!hint) {
      hint = document.createElement('p');
      hint.className = 'help resolved';
      hint.id = id;
      hint.setAttribute('aria-live', 'polite');
      input.insertAdjacentElement('afterend', hint);
    }
    return hint;
  }

  function resolveCard(card) {
    var fields = card.querySelectorAll('input[list="reldates-choices"]');
    var query = new URLSearchParams();
    card.querySelectorAll('[data-field^="params."]').forEach(function (el) {
      if (el.value !== '') { query.append(el.getAttribute('data-field').slice(7), el.value); }
    });
    var report = card.getAttribute('data-report');
    fetch('/api/reports/' + encodeURIComponent(report) + '/check?' + query.toString(),
          {credentials: 'same-origin', headers: {'Accept': 'application/json'}})
      .then(function (res) { return res.ok ? res.json() : null; })
      .then(function (data) {
        fields.forEach(function (input) {
          var name = input.getAttribute('data-field').slice(7);
          var relative = input.value.trim() !== '' && !FIXED.test(input.value.trim());
          var value = data && relative ? data.params[name] : null;
          hintFor(input).textContent = value
            ? '= ' + value + (value.length > 10 ? ' UTC' : '') + ' now' : '';
        });
      }, function () { /* typing again tries again */ });
  }

  document.querySelectorAll('form.report-form').forEach(function (card) {
    var wait = null;
    card.addEventListener('input', function (event) {
      if (!event.target.matches('input[list="reldates-choices"]')) { return; }
      clearTimeout(wait);
      wait = setTimeout(function () { resolveCard(card); }, 300);
    });
  });

  var form = document.getElementById('schedule-form');
  var box = document.getElementById('s-preview');
  var editor = document.getElementById('schedule-editor');
  if (!form || !box || !editor) { return; }

  var timer = null;
  var asked = 0;  // a slow older answer must not replace a newer one

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
    var field = window.Nightshift.enabledField;
    var cron = field(form, 'cron'), report = field(form, 'report');
    var zone = field(form, 'timezone');
    var params = window.Nightshift.paramsOf(form);
    if (!cron || !report || !cron.value.trim()) {
      show('');
      return;
    }
    var ticket = ++asked;
    var body = {report: report.value, params: params, cron: cron.value.trim(),
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
