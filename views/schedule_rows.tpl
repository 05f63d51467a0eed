% if not schedules:
<tr class="empty"><td colspan="5">No schedules yet. Use “New schedule” to send a report on a timetable.</td></tr>
% end
% for row in schedules:
% s = row['schedule']
% last = row['last']
<tr id="schedule-{{s.name}}" data-schedule="{{s.name}}" data-enabled="{{'yes' if s.enabled else 'no'}}">
  <td data-label="Name"><strong>{{s.name}}</strong><br><small>{{s.report}} to {{', '.join(s.recipients)}}</small>
    % include('bursting_schedule_split', s=s)
    % if any(v is not None for v in s.params.values()):
    <br><small>{{', '.join('%s=%s' % (k, v) for k, v in s.params.items() if v is not None)}}</small>
    % end
  </td>
  <td data-label="When"><code>{{s.cron}}</code><br><small>{{s.timezone}}</small></td>
  <td data-label="Next run">
    % if s.enabled and row['next_utc']:
    <time datetime="{{iso(row['next_utc'])}}" title="{{utc_text(row['next_utc'])}}" data-zone="{{s.timezone}}">{{next_run_text(row, now)}}</time><br><small>{{s.timezone}} time</small>
    % elif s.enabled:
    never
    % else:
    <span class="status status-paused">paused</span>
    % end
  </td>
  <td data-label="Last run">
    % if last:
    <a href="#run-{{last.id}}">#{{last.id}}</a> <span class="status status-{{last.status}}">{{last.status}}</span><br><small>{{ago(last.created_at, now)}}</small>
    % else:
    -
    % end
  </td>
  <td data-label="Actions" class="actions">
    % if s.managed_by == 'config':
    <button type="button" data-action="run" data-name="{{s.name}}" id="schedule-{{s.name}}-run">Run now<span class="visually-hidden"> {{s.name}}</span></button>
    <br><small>Declared in config.ini: change it there.</small>
    % else:
    % if s.enabled:
    <button type="button" data-action="pause" data-name="{{s.name}}" id="schedule-{{s.name}}-toggle">Pause<span class="visually-hidden"> {{s.name}}</span></button>
    % else:
    <button type="button" data-action="resume" data-name="{{s.name}}" id="schedule-{{s.name}}-toggle">Resume<span class="visually-hidden"> {{s.name}}</span></button>
    % end
    <button type="button" data-action="run" data-name="{{s.name}}" id="schedule-{{s.name}}-run">Run now<span class="visually-hidden"> {{s.name}}</span></button>
    <button type="button" data-action="edit" data-name="{{s.name}}" id="schedule-{{s.name}}-edit">Edit<span class="visually-hidden"> {{s.name}}</span></button>
    <button type="button" data-action="delete" data-name="{{s.name}}" id="schedule-{{s.name}}-delete" class="danger">Delete<span class="visually-hidden"> {{s.name}}</span></button>
    % end
    % include('control_backfill.tpl', s=s)
    % include('bursting_schedule_test', s=s)
  </td>
</tr>
% end
