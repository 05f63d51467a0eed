<section id="consumers" aria-labelledby="consumers-title">
  <h2 id="consumers-title">Consumers</h2>
  <p class="lead">The worker processes that run reports and tick the schedules, as they last reported (every few seconds).</p>
  % if watch['problems']:
  <div class="notice" role="alert">
    <p><strong>Degraded:</strong></p>
    <ul>
      % for problem in watch['problems']:
      <li>{{problem}}</li>
      % end
    </ul>
  </div>
  % end
  <div class="table-wrap">
    <table class="stack">
      <thead><tr><th scope="col">Consumer</th><th scope="col">State</th><th scope="col">Workers</th>
        <th scope="col">Ticks schedules</th><th scope="col">Last heartbeat</th><th scope="col">Last tick</th></tr></thead>
      <tbody id="consumers-body">
        % if not watch['consumers']:
        <tr class="empty"><td colspan="6">No consumer has registered. Start one: <code>huey_consumer tasks.huey</code> or <code>python server.py --worker</code>.</td></tr>
        % end
        % for c in watch['consumers']:
        <tr data-consumer="{{c['id']}}" data-live="{{'yes' if c['live'] else 'no'}}">
          <td data-label="Consumer"><strong>{{c['host']}}</strong> pid {{c['pid']}}<br><small>since <time datetime="{{c['started_at']}}">{{c['started_at'][:16].replace('T', ' ')}} UTC</time></small></td>
          <td data-label="State"><span class="status status-{{'delivered' if c['live'] else 'failed'}}">{{'live' if c['live'] else 'silent'}}</span></td>
          <td data-label="Workers">{{c['workers']}} {{c['worker_type']}}</td>
          <td data-label="Ticks schedules">{{'yes' if c['periodic'] else 'no (-n)'}}</td>
          <td data-label="Last heartbeat">{{seconds_text(c['seconds_since_heartbeat'])}} ago</td>
          <td data-label="Last tick">{{(seconds_text(c['seconds_since_tick']) + ' ago') if c['seconds_since_tick'] is not None else 'never'}}</td>
        </tr>
        % end
      </tbody>
    </table>
  </div>
</section>
