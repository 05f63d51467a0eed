% if not runs:
<tr class="empty"><td colspan="9">No runs yet. Email a report above and it shows up here.</td></tr>
% end
% for run in runs:
% seconds = run_duration(run, now)
% ready = file_ready(run)
% writing = run.status == RunStatus.RUNNING and not run.file_key
<tr id="run-{{run.id}}" data-run="{{run.id}}" data-status="{{run.status}}" data-report="{{run.report}}">
  <td data-label="Run">#{{run.id}}<br><small><time datetime="{{iso(run.created_at)}}" title="{{utc_text(run.created_at)}}">{{ago(run.created_at, now)}}</time></small></td>
  <td data-label="Report">{{run.report}}<br><small>{{'schedule ' + run.schedule if run.schedule else run.trigger}}</small></td>
  <td data-label="Status"><span class="status status-{{run.status}}">{{run.status}}</span></td>
  <td data-label="Rows" class="num">{{'{:,}'.format(run.rows)}}{{' so far' if writing else ''}}{{' (cut at the row limit)' if run.truncated else ''}}</td>
  <td data-label="Size" class="num">{{human_size(run.bytes) if run.bytes else '-'}}</td>
  <td data-label="Duration" class="num">{{seconds_text(seconds)}}</td>
  <td data-label="Attempts" class="num">{{run.attempts}}</td>
  <td data-label="Details" class="details">
    % if run.error:
    <span class="{{'skip-text' if run.status == RunStatus.SKIPPED else 'error-text'}}">{{run.error}}</span>
    % if run.status == RunStatus.QUEUED and run.next_attempt_at:
    <br><small>next attempt {{ago(run.next_attempt_at, now)}}</small>
    % end
    % elif run.status == RunStatus.RUNNING and not writing:
    <small>file written; sending to {{', '.join(run.recipients)}}</small>
    % elif run.sent_as == 'notice':
    <small>no rows: a “no data” notice went to {{', '.join(run.recipients)}}</small>
    % elif run.recipients:
    <small>to {{', '.join(run.recipients)}}</small>
    % end
    % include('reldates_run_params', run=run)
    % include('control_run_actions.tpl', run=run)
    % include('bursting_run', run=run)
  </td>
  <td data-label="File">
    % if ready:
    <a id="run-{{run.id}}-file" href="/api/runs/{{run.id}}/file" download>Download<span class="visually-hidden"> run {{run.id}}</span></a>
    <br><small>{{human_size(run.file_bytes)}}{{' ' + run.format if run.format != 'csv' else ''}}{{' zip' if run.file_name.endswith('.zip') else ''}}</small>
    % else:
    -
    % end
  </td>
</tr>
% end
