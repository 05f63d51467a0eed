// Nightshift page: sends forms to the JSON API, shows its field errors next
// to the fields, and refreshes the server-rendered tables while runs move.
(function () {
  'use strict';

  var FAST = 1500;   // ms between refreshes while a run is queued or running
  var SLOW = 10000;  // otherwise
  // Statuses a run never leaves, as the server defines them.
  var FINAL = (document.body.getAttribute('data-final') || '').split(' ');

  function announce(text) {
    var box = document.getElementById('announcer');
    if (box) { box.textContent = text; }
  }

  function api(method, url, body) {
    var options = {method: method, headers: {'Accept': 'application/json'},
                   credentials: 'same-origin'};
    // Every write says JSON, a body or not: a form another site posts
    // cannot, and the server refuses writes that do not.
    if (method !== 'GET') {
      options.headers['Content-Type'] = 'application/json';
    }
    if (body !== undefined) {
      options.body = JSON.stringify(body);
    }
    return fetch(url, options).then(function (res) {
      return res.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        return {ok: res.ok, status: res.status, data: data};
      });
    }, function () {
      return {ok: false, status: 0, data: {message: 'the server is not answering; try again'}};
    });
  }

  // --- forms and their errors ------------------------------------------

  function setStatus(form, text, bad) {
    var box = form.querySelector('.form-status');
    box.textContent = text;
    box.classList.toggle('bad', !!bad);
  }

  function clearErrors(form) {
    form.querySelectorAll('[aria-invalid]').forEach(function (el) {
      el.removeAttribute('aria-invalid');
    });
    form.querySelectorAll('.error').forEach(function (el) {
      el.hidden = true; el.textContent = '';
    });
    setStatus(form, '');
  }

  function enabledField(form, name) {
    var found = null;
    form.querySelectorAll('[data-field]').forEach(function (el) {
      if (!found && el.getAttribute('data-field') === name && !el.closest('[disabled]')) {
        found = el;
      }
    });
    return found;
  }

  // The API names the field it refuses: "params.since", "to[1]", "cron".
  function showError(form, result) {
    var data = result.data || {};
    var message = data.message || ('the server answered ' + result.status);
    var name = (data.field || '').replace(/\[\d+\]$/, '');
    var input = name ? enabledField(form, name) : null;
    if (!input) {
      setStatus(form, (data.field ? data.field + ': ' : '') + message, true);
      return;
    }
    var index = /\[(\d+)\]$/.exec(data.field || '');
    if (index) {
      var given = splitAddresses(input.value)[Number(index[1])];
      if (given) { message = '“' + given + '”: ' + message; }
    }
    var fold = input.closest('details');
    if (fold) { fold.open = true; }  // a field in a folded section
    var box = document.getElementById(input.id + '-error');
    if (!box) {  // a field without a place for messages (a checkbox)
      setStatus(form, data.field + ': ' + message, true);
      input.focus();
      return;
    }
    box.textContent = message;
    box.hidden = false;
    input.setAttribute('aria-invalid', 'true');
    input.focus();
    setStatus(form, 'Please correct the marked field.', true);
  }

  function splitAddresses(text) {
    return text.split(/[\s,;]+/).filter(function (part) { return part; });
  }

  // Parameter values from a form's enabled fields; empty means "not given".
  function paramsOf(form) {
    var params = {};
    form.querySelectorAll('[data-field^="params."]').forEach(function (el) {
      if (el.closest('[disabled]') || el.value === '') { return; }
      params[el.getAttribute('data-field').slice(7)] = el.value;
    });
    return params;
  }

  // The page's other scripts (loaded after this one) share these.
  window.Nightshift = {api: api, enabledField: enabledField, paramsOf: paramsOf};

  // Fields a feature adds to a form (data-extra): sent under their data-field
  // name, a checkbox as true/false. Empty is "not given", or `emptyAs` (null:
  // back to the default) when that is set. Templates (textareas) go as typed.
  function extrasOf(form, emptyAs) {
    var extra = {};
    form.querySelectorAll('[data-extra]').forEach(function (el) {
      if (el.closest('[disabled]')) { return; }
      var name = el.getAttribute('data-field');
      var value = el.tagName === 'TEXTAREA' ? el.value : el.value.trim();
      if (el.type === 'checkbox') { extra[name] = el.checked; }
      else if (value !== '') { extra[name] = value; }
      else if (emptyAs !== undefined) { extra[name] = emptyAs; }
    });
    return extra;
  }

  function fillExtraFields(form, values) {
    form.querySelectorAll('[data-extra]').forEach(function (el) {
      var value = values[el.getAttribute('data-field')];
      if (el.type === 'checkbox') { el.checked = !!value; }
      else { el.value = value === null || value === undefined ? '' : String(value); }
    });
  }

  function busy(form, on) {
    form.querySelectorAll('button').forEach(function (b) { b.disabled = on; });
  }

  // --- reports: download or email -----------------------------------------

  function submitReport(form, action) {
    var report = form.getAttribute('data-report');
    var params = paramsOf(form);
    clearErrors(form);
    busy(form, true);
    var done = function () { busy(form, false); };
    if (action === 'download') {
      var chosen = enabledField(form, 'format');  // the file format (formats.js)
      var query = new URLSearchParams(Object.assign({}, params,
        chosen ? {format: chosen.value} : {})).toString();
      api('GET', '/api/reports/' + report + '/check' + (query ? '?' + query : ''))
        .then(function (result) {
          done();
          if (!result.ok) { showError(form, result); return; }
          setStatus(form, 'Download started.');
          window.location.assign(result.data.url);
        });
      return;
    }
    var to = splitAddresses(enabledField(form, 'to').value);
    api('POST', '/api/runs', Object.assign({report: report, params: params, to: to},
                                           extrasOf(form))).then(function (result) {
      done();
      if (!result.ok) { showError(form, result); return; }
      setStatus(form, 'Run #' + result.data.id + ' queued: it will be emailed to ' +
                (to.length ? to.join(', ') : 'the addresses in its data') +
                '. Follow it under Recent runs.');
      runs.refresh();
    });
  }

  document.querySelectorAll('form.report-form').forEach(function (form) {
    form.addEventListener('submit', function (event) {
      event.preventDefault();
      var action = (event.submitter && event.submitter.value) || 'download';
      submitReport(form, action);
    });
  });

  // --- tables refreshed from server-rendered fragments -------------------

  // Replace a tbody's rows, keeping keyboard focus on the same control.
  function replaceRows(body, html) {
    var focused = document.activeElement;
    var focusId = focused && body.contains(focused) ? focused.id : null;
    body.innerHTML = html;
    if (focusId) {
      var again = document.getElementById(focusId);
      if (again) { again.focus(); }
    }
  }

  function statusesOf(body) {
    var seen = {};
    body.querySelectorAll('tr[data-run]').forEach(function (row) {
      seen[row.getAttribute('data-run')] = {status: row.getAttribute('data-status'),
                                             report: row.getAttribute('data-report')};
    });
    return seen;
  }

  function refreshChart(report) {
    var box = document.querySelector('[data-chart="' + report + '"]');
    if (!box) { return; }
    fetch('/ui/charts/' + encodeURIComponent(report), {credentials: 'same-origin'})
      .then(function (res) { return res.ok ? res.text() : null; })
      .then(function (svg) { if (svg) { box.innerHTML = svg; } });
  }

  var runs = {
    body: document.getElementById('runs-body'),
    timer: null,
    last: '',
    asked: 0,  // numbers the requests: a slow older answer must not undo a newer one
    refresh: function () {
      var self = this;
      if (!self.body) { return; }
      clearTimeout(self.timer);
      var ticket = ++self.asked;
      fetch(self.body.getAttribute('data-source'), {credentials: 'same-origin'})
        .then(function (res) { return res.ok ? res.text() : null; })
        .then(function (html) {
          if (ticket !== self.asked) { return; }
          if (html !== null && html !== self.last) {
            var before = statusesOf(self.body);
            replaceRows(self.body, html);
            self.last = html;
            var after = statusesOf(self.body);
            Object.keys(after).forEach(function (id) {
              var was = before[id], now = after[id];
              // A run can be queued and finished between two looks: new
              // and already final counts as a change too.
              var changed = was ? was.status !== now.status : FINAL.indexOf(now.status) >= 0;
              if (changed) {
                announce('Run #' + id + ' (' + now.report + ') is ' + now.status + '.');
                if (FINAL.indexOf(now.status) >= 0) { refreshChart(now.report); }
              }
            });
          }
        }, function () { /* the next poll tries again */ })
        .then(function () { if (ticket === self.asked) { self.schedule(); } });
    },
    schedule: function () {
      var self = this;
      var moving = Array.prototype.some.call(self.body.querySelectorAll('tr[data-status]'),
        function (row) { return FINAL.indexOf(row.getAttribute('data-status')) < 0; });
      clearTimeout(self.timer);
      // A hidden tab does not poll; showing it again refreshes at once.
      if (document.hidden) { return; }
      self.timer = setTimeout(function () { self.refresh(); }, moving ? FAST : SLOW);
    }
  };

  // The server knows each schedule's timezone, not the reader's: add the
  // reader's own clock time where the two differ.
  function showReaderTime(root) {
    var zone;
    try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone; } catch (e) { return; }
    var format = new Intl.DateTimeFormat(undefined, {
      weekday: 'short', day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit'});
    root.querySelectorAll('time[data-zone]').forEach(function (el) {
      var moment = new Date(el.getAttribute('datetime'));
      if (!zone || el.getAttribute('data-zone') === zone || isNaN(moment)) { return; }
      var note = document.createElement('small');
      note.className = 'reader-time';
      note.textContent = format.format(moment) + ' your time (' + zone + ')';
      el.parentNode.appendChild(document.createElement('br'));
      el.parentNode.appendChild(note);
    });
  }

  var schedules = {
    body: document.getElementById('schedules-body'),
    asked: 0,
    refresh: function () {
      var self = this, body = this.body;
      if (!body) { return Promise.resolve(); }
      var ticket = ++self.asked;
      return fetch(body.getAttribute('data-source'), {credentials: 'same-origin'})
        .then(function (res) { return res.ok ? res.text() : null; })
        .then(function (html) {
          if (html !== null && ticket === self.asked) {
            replaceRows(body, html);
            showReaderTime(body);
          }
        }, function () { /* the next refresh tries again */ });
    }
  };
  if (schedules.body) { showReaderTime(schedules.body); }

  if (runs.body) {
    runs.schedule();
    document.addEventListener('visibilitychange', function () {
      if (!document.hidden) { runs.refresh(); }
    });
    // Other scripts of the page (control.js) ask for a refresh after they act.
    document.addEventListener('nightshift:refresh-runs', function () { runs.refresh(); });
    // Next-run times move on; redraw them now and then.
    setInterval(function () { if (!document.hidden) { schedules.refresh(); } }, 60000);
  }

  // --- schedules: actions and the editor -------------------------------------

  var editor = document.getElementById('schedule-editor');
  var scheduleForm = document.getElementById('schedule-form');
  var newButton = document.getElementById('new-schedule');
  var editing = null;  // name of the schedule being edited, or null for a new one

  function showParamsFor(report) {
    scheduleForm.querySelectorAll('fieldset[data-params-for]').forEach(function (set) {
      var mine = set.getAttribute('data-params-for') === report;
      set.hidden = !mine;
      set.disabled = !mine;
    });
  }

  function openEditor(schedule) {
    editing = schedule ? schedule.name : null;
    scheduleForm.reset();
    clearErrors(scheduleForm);
    var title = document.getElementById('schedule-form-title');
    title.textContent = schedule ? 'Edit schedule ' + schedule.name : 'New schedule';
    var name = enabledField(scheduleForm, 'name');
    name.readOnly = !!schedule;
    if (schedule) {
      name.value = schedule.name;
      enabledField(scheduleForm, 'report').value = schedule.report;
      enabledField(scheduleForm, 'to').value = schedule.to.join(', ');
      enabledField(scheduleForm, 'cron').value = schedule.cron;
      enabledField(scheduleForm, 'timezone').value = schedule.timezone;
      enabledField(scheduleForm, 'enabled').checked = schedule.enabled;
      fillExtraFields(scheduleForm, schedule);
    }
    showParamsFor(enabledField(scheduleForm, 'report').value);
    if (schedule) {
      Object.keys(schedule.params).forEach(function (key) {
        var input = enabledField(scheduleForm, 'params.' + key);
        if (input && schedule.params[key] !== null) { input.value = String(schedule.params[key]); }
      });
    }
    editor.hidden = false;
    newButton.setAttribute('aria-expanded', 'true');
    (schedule ? enabledField(scheduleForm, 'report') : name).focus();
  }

  function closeEditor() {
    editor.hidden = true;
    newButton.setAttribute('aria-expanded', 'false');
    editing = null;
  }

  if (scheduleForm) {
    newButton.addEventListener('click', function () { openEditor(null); });
    document.getElementById('schedule-cancel').addEventListener('click', function () {
      closeEditor();
      newButton.focus();
    });
    enabledField(scheduleForm, 'report').addEventListener('change', function (event) {
      showParamsFor(event.target.value);
    });
    scheduleForm.addEventListener('submit', function (event) {
      event.preventDefault();
      clearErrors(scheduleForm);
      var body = {
        report: enabledField(scheduleForm, 'report').value,
        params: paramsOf(scheduleForm),
        to: splitAddresses(enabledField(scheduleForm, 'to').value),
        cron: enabledField(scheduleForm, 'cron').value.trim(),
        timezone: enabledField(scheduleForm, 'timezone').value.trim(),
        enabled: enabledField(scheduleForm, 'enabled').checked
      };
      Object.assign(body, extrasOf(scheduleForm, null));
      var request = editing
        ? api('PUT', '/api/schedules/' + encodeURIComponent(editing), body)
        : api('POST', '/api/schedules',
              Object.assign({name: enabledField(scheduleForm, 'name').value.trim()}, body));
      busy(scheduleForm, true);
      request.then(function (result) {
        busy(scheduleForm, false);
        if (!result.ok) { showError(scheduleForm, result); return; }
        var saved = result.data;
        closeEditor();
        announce('Schedule ' + saved.name + ' saved' +
                 (saved.next_run_local ? '; next run ' + saved.next_run_local : '') + '.');
        schedules.refresh().then(function () {
          var row = document.getElementById('schedule-' + saved.name + '-edit');
          (row || newButton).focus();
        });
      });
    });
  }

  if (schedules.body) {
    schedules.body.addEventListener('click', function (event) {
      var button = event.target.closest('button[data-action]');
      if (!button) { return; }
      var name = button.getAttribute('data-name');
      var action = button.getAttribute('data-action');
      var url = '/api/schedules/' + encodeURIComponent(name);
      if (action === 'edit') {
        api('GET', url).then(function (result) {
          if (result.ok) { openEditor(result.data); }
          else { announce((result.data || {}).message || 'That schedule could not be read.'); }
        });
        return;
      }
      if (action === 'delete' && !window.confirm('Delete schedule ' + name + '?')) { return; }
      button.disabled = true;
      api(action === 'delete' ? 'DELETE' : 'POST',
          action === 'delete' ? url : url + '/' + action).then(function (result) {
        if (!result.ok) {
          button.disabled = false;
          announce((result.data && result.data.message) || 'That did not work.');
          return;
        }
        var said = {pause: 'paused', resume: 'resumed', delete: 'deleted',
                    run: 'sent now as run #' + (result.data && result.data.id)}[action];
        announce('Schedule ' + name + ' ' + said + '.');
        schedules.refresh();
        if (action === 'run') { runs.refresh(); }
      });
    });
  }
})();
