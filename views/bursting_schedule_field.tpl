% # Bursting on the schedule form; bursting.js points the suggestions at the chosen report.
% from bursting import report_columns
<div class="field">
  <label for="s-split_by">Each recipient their own rows <small>(optional)</small></label>
  <input id="s-split_by" name="split_by" data-field="split_by" data-extra type="text" autocomplete="off"
         spellcheck="false" aria-describedby="s-split_by-help s-split_by-error">
  <p class="help" id="s-split_by-help">A column holding each row's recipient, e.g. customer_email: every address in it gets only its rows; "Email to" is then optional and gets the whole file. Leave empty to send every row to everyone.</p>
  <p class="error" id="s-split_by-error" hidden></p>
  % for report in reports:
  <datalist id="split-columns-{{report.name}}">
    % for column in report_columns(report) or []:
    <option value="{{column}}"></option>
    % end
  </datalist>
  % end
</div>
