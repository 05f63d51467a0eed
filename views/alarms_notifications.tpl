<section id="notifications" aria-labelledby="notifications-title">
  <h2 id="notifications-title">Notifications</h2>
  <p class="lead">What the operator and the webhooks were told: failed runs, late and missed slots, deliveries. A burst is one message.</p>
  <div class="table-wrap">
    <table class="stack">
      <thead><tr><th scope="col">Message</th><th scope="col">To</th><th scope="col">Says</th>
        <th scope="col">Status</th></tr></thead>
      <tbody id="notifications-body" data-source="/ui/notifications">
        <tr class="empty"><td colspan="4">Loading…</td></tr>
      </tbody>
    </table>
  </div>
</section>
