% # Backfill a schedule's past slots (control.backfill through the API; static/control.js).
<details class="backfill" id="schedule-{{s.name}}-backfill">
  <summary>Backfill<span class="visually-hidden"> {{s.name}}</span></summary>
  <form class="backfill-form" data-backfill="{{s.name}}" novalidate>
    <label for="backfill-{{s.name}}-from">From</label>
    <input type="date" id="backfill-{{s.name}}-from" name="from" required>
    <label for="backfill-{{s.name}}-to">to</label>
    <input type="date" id="backfill-{{s.name}}-to" name="to" required>
    <small>days in {{s.timezone}}, both included</small>
    <button type="submit" id="backfill-{{s.name}}-run">Run past slots<span class="visually-hidden"> of {{s.name}}</span></button>
  </form>
</details>
