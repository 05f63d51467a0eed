% # The schedule form's preview of its next slot (static/reldates.js fills it),
% # and the relative dates every date field offers (reldates.COMMON).
% from reldates import COMMON
<div class="field reldates-preview">
  <p class="help" id="s-preview-help">Dates may be relative: <code>yesterday</code>, <code>start of last month</code>, <code>today - 7 days</code>. A scheduled run works them out in the schedule's timezone at its own time.</p>
  <p id="s-preview" class="preview" role="status" aria-live="polite" aria-describedby="s-preview-help"></p>
</div>
<datalist id="reldates-choices">
  % for choice in COMMON:
  <option value="{{choice}}"></option>
  % end
</datalist>
