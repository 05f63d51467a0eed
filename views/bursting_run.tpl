% # A run's test marker and split summary, in the Details cell (bursting.py, testsend.py).
% if run.trigger == 'test':
<div><small class="test-run">test send{{' of the slot at ' + utc_text(run.test_slot_at) if run.test_slot_at else ''}}</small></div>
% end
% if run.split_by:
% found = run.split_report or {}
<div><small class="split">split by <code>{{run.split_by}}</code>{{': %d recipient(s), their own rows' % found['recipients'] if 'recipients' in found else ''}}</small></div>
% if found.get('would_send'):
<div><small>would go to {{', '.join('%s (%d)' % (w['address'], w['rows']) for w in found['would_send'][:10])}}{{' ...' if len(found['would_send']) > 10 else ''}}</small></div>
% end
% if found.get('refused_rows'):
<details class="split-refused" id="run-{{run.id}}-refused">
  <summary><span class="error-text">{{'{:,}'.format(found['refused_rows'])}} row(s) {{'would not be' if run.trigger == 'test' else 'not'}} sent: address refused</span></summary>
  <ul>
    % for item in found.get('refused', []):
    <li><code>{{item['address'] or '(empty)'}}</code>: {{'{:,}'.format(item['rows'])}} row(s); {{item['reason']}}</li>
    % end
    % if found.get('refused_unlisted_rows'):
    <li>{{'{:,}'.format(found['refused_unlisted_rows'])}} more row(s) at other refused addresses</li>
    % end
  </ul>
</details>
% end
% end
