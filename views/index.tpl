% rebase('layout', title='Reports')
<noscript><p class="notice">This page needs JavaScript to email reports and update runs; the JSON API at /api works without it.</p></noscript>

<section id="reports" aria-labelledby="reports-title">
  <h1 id="reports-title">Reports</h1>
  <p class="lead">Download a report now, or have it emailed as a CSV attachment. Runs appear under <a href="#runs">Recent runs</a>.</p>
  <div class="cards">
  % for report in reports:
  <article class="card report" id="report-{{report.name}}" aria-labelledby="report-{{report.name}}-title">
    <h2 id="report-{{report.name}}-title">{{report.title}}</h2>
    <p>{{report.description}}</p>
    <figure class="chart-box">
      <div data-chart="{{report.name}}">{{!charts[report.name]}}</div>
      <figcaption><span class="key key-bar" aria-hidden="true"></span> duration
        <span class="key key-line" aria-hidden="true"></span> rows
        <span class="key-failed" aria-hidden="true">×</span> failed</figcaption>
    </figure>
    <form class="report-form" data-report="{{report.name}}" novalidate>
      % if report.params:
      <fieldset>
        <legend>Parameters <small>(all optional unless marked)</small></legend>
        % for param in report.params:
        % include('param_field', param=param, prefix='r-' + report.name)
        % end
      </fieldset>
      % end
      <div class="field">
        <label for="r-{{report.name}}-to">Email to</label>
        <input id="r-{{report.name}}-to" name="to" data-field="to" type="text" inputmode="email"
               autocomplete="email" aria-describedby="r-{{report.name}}-to-help r-{{report.name}}-to-error">
        <p class="help" id="r-{{report.name}}-to-help">One or more addresses, separated by commas. Only needed for email.</p>
        <p class="error" id="r-{{report.name}}-to-error" hidden></p>
      </div>
      % include('formats_field', prefix='r-' + report.name, help='For the download and the email. Excel keeps numbers, decimals and dates as such.')
      % include('bursting_run_field', report=report)
      % include('messages_fields', prefix='r-' + report.name)
      <div class="buttons">
        <button type="submit" value="download" data-download-label>Download CSV</button>
        <button type="submit" value="email" class="primary">Email it</button>
      </div>
      <p class="form-status" role="status" aria-live="polite"></p>
    </form>
  </article>
  % end
  </div>
  % if broken:
  <div class="card broken-reports" role="alert">
    <h2>Report files with errors</h2>
    <p>These cannot run until their file is fixed; the others work as usual.</p>
    <ul>
      % for name, error in broken:
      <li><strong>{{name}}</strong>: <code>{{error.path}}:{{error.line}}</code> {{error.message}}</li>
      % end
    </ul>
  </div>
  % end
</section>

<section id="runs" aria-labelledby="runs-title">
  <h2 id="runs-title">Recent runs</h2>
  <p class="lead">Updates by itself. Finished files can be downloaded for {{'%g' % retention_days}} days.</p>
  <div class="table-wrap">
    <table class="stack">
      <thead><tr><th scope="col">Run</th><th scope="col">Report</th><th scope="col">Status</th>
        <th scope="col">Rows</th><th scope="col">Size</th><th scope="col">Duration</th>
        <th scope="col">Attempts</th><th scope="col">Details</th><th scope="col">File</th></tr></thead>
      <tbody id="runs-body" data-source="/ui/runs">
        % include('runs_rows')
      </tbody>
    </table>
  </div>
</section>

<section id="schedules" aria-labelledby="schedules-title">
  <h2 id="schedules-title">Schedules</h2>
  <p class="lead">Reports sent on a timetable. Times are shown in each schedule's own timezone.</p>
  <p><button type="button" id="new-schedule" class="primary" aria-controls="schedule-editor" aria-expanded="false">New schedule</button></p>
  <div id="schedule-editor" class="card" hidden>
    <form id="schedule-form" novalidate aria-labelledby="schedule-form-title">
      <h3 id="schedule-form-title" tabindex="-1">New schedule</h3>
      <div class="field">
        <label for="s-name">Name</label>
        <input id="s-name" name="name" data-field="name" type="text" maxlength="64" autocomplete="off"
               aria-describedby="s-name-help s-name-error">
        <p class="help" id="s-name-help">Lowercase letters, digits, - or _, e.g. nightly-orders.</p>
        <p class="error" id="s-name-error" hidden></p>
      </div>
      <div class="field">
        <label for="s-report">Report</label>
        <select id="s-report" name="report" data-field="report" aria-describedby="s-report-error">
          % for report in reports:
          <option value="{{report.name}}">{{report.title}}</option>
          % end
        </select>
        <p class="error" id="s-report-error" hidden></p>
      </div>
      % for report in reports:
      % if report.params:
      <fieldset data-params-for="{{report.name}}">
        <legend>{{report.title}} parameters</legend>
        % for param in report.params:
        % include('param_field', param=param, prefix='s-' + report.name)
        % end
      </fieldset>
      % end
      % end
      <div class="field">
        <label for="s-to">Email to</label>
        <input id="s-to" name="to" data-field="to" type="text" inputmode="email" autocomplete="email"
               aria-describedby="s-to-help s-to-error">
        <p class="help" id="s-to-help">One or more addresses, separated by commas.</p>
        <p class="error" id="s-to-error" hidden></p>
      </div>
      % include('formats_field', prefix='s', help='What each scheduled email attaches.')
      % include('bursting_schedule_field')
      <div class="field">
        <label for="s-cron">When (cron)</label>
        <input id="s-cron" name="cron" data-field="cron" type="text" autocomplete="off" spellcheck="false"
               aria-describedby="s-cron-help s-cron-error">
        <p class="help" id="s-cron-help">minute hour day-of-month month weekday, e.g. <code>0 6 * * 1-5</code> = 06:00 on weekdays, <code>30 2 * * *</code> = 02:30 every night, <code>@daily</code>.</p>
        <p class="error" id="s-cron-error" hidden></p>
      </div>
      <div class="field">
        <label for="s-timezone">Timezone</label>
        <input id="s-timezone" name="timezone" data-field="timezone" type="text" list="timezones"
               value="{{default_timezone}}" autocomplete="off" aria-describedby="s-timezone-help s-timezone-error">
        <p class="help" id="s-timezone-help">An IANA name such as Europe/Lisbon; the cron times are read in it, daylight saving included.</p>
        <p class="error" id="s-timezone-error" hidden></p>
      </div>
      % include('reldates_preview')
      <div class="field check">
        <input id="s-enabled" name="enabled" data-field="enabled" type="checkbox" checked>
        <label for="s-enabled">Enabled</label>
      </div>
      % include('messages_fields', prefix='s')
      <div class="buttons">
        <button type="submit" class="primary">Save schedule</button>
        <button type="button" id="schedule-cancel">Cancel</button>
      </div>
      <p class="form-status" role="status" aria-live="polite"></p>
    </form>
  </div>
  <div class="table-wrap">
    <table class="stack">
      <thead><tr><th scope="col">Name</th><th scope="col">When</th><th scope="col">Next run</th>
        <th scope="col">Last run</th><th scope="col">Actions</th></tr></thead>
      <tbody id="schedules-body" data-source="/ui/schedules">
        % include('schedule_rows')
      </tbody>
    </table>
  </div>
  <datalist id="timezones">
    % for name in timezones:
    <option value="{{name}}"></option>
    % end
  </datalist>
</section>
% include('consumers_panel', watch=watch)
% include('alarms_notifications')
<div id="announcer" class="visually-hidden" role="status" aria-live="polite"></div>
