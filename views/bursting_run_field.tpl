% # Bursting on the report form: a column of recipient addresses (bursting.py).
% from bursting import report_columns
% columns = report_columns(report)
% ident = 'r-%s-split_by' % report.name
<div class="field">
  <label for="{{ident}}">Each recipient their own rows <small>(optional)</small></label>
  % if columns:
  <select id="{{ident}}" name="split_by" data-field="split_by" data-extra aria-describedby="{{ident}}-help {{ident}}-error">
    <option value="">No: everyone gets every row</option>
    % for column in columns:
    <option value="{{column}}">Split by {{column}}</option>
    % end
  </select>
  % else:
  <input id="{{ident}}" name="split_by" data-field="split_by" data-extra type="text" autocomplete="off" spellcheck="false"
         aria-describedby="{{ident}}-help {{ident}}-error">
  % end
  <p class="help" id="{{ident}}-help">A column holding each row's recipient: every address in it gets only its rows (then "Email to" is optional and gets the whole file).</p>
  <p class="error" id="{{ident}}-error" hidden></p>
</div>
