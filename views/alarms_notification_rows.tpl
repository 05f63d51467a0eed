% if not notes:
<tr class="empty"><td colspan="4">Nothing announced yet. Failed runs, late or missed slots (and, for webhooks, deliveries) show up here.</td></tr>
% end
% for note in notes:
<tr id="notification-{{note.id}}" data-notification="{{note.id}}" data-status="{{note.status}}">
  <td data-label="Message">#{{note.id}}<br><small><time datetime="{{iso(note.created_at)}}" title="{{utc_text(note.created_at)}}">{{ago(note.created_at, now)}}</time></small></td>
  <td data-label="To">{{note.channel}}<br><small>{{shown_target(note)}}</small></td>
  <td data-label="Says" class="details">{{note_text(note)}}<br><small>{{note.events}} event{{'' if note.events == 1 else 's'}}</small></td>
  <td data-label="Status"><span class="status status-{{'delivered' if note.status == 'sent' else ('failed' if note.status == 'failed' else 'queued')}}">{{note.status}}</span>
    % if note.attempts:
    <br><small>{{note.attempts}} tr{{'y' if note.attempts == 1 else 'ies'}}{{(', HTTP %d' % note.response_status) if note.response_status else ''}}</small>
    % end
    % if note.error and note.error != 'HTTP %s' % note.response_status:
    <br><span class="error-text">{{note.error}}</span>
    % end
  </td>
</tr>
% end
