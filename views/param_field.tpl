% fid = prefix + '-' + param.name
% described = ((fid + '-help ') if param.help else '') + fid + '-error'
% label = param.name.replace('_', ' ').capitalize()
<div class="field">
  <label for="{{fid}}">{{label}}{{' (required)' if param.required else ''}}</label>
  % if param.type in ('choice', 'bool'):
  <select id="{{fid}}" name="{{param.name}}" data-field="params.{{param.name}}" aria-describedby="{{described}}">
    % if not param.required:
    <option value="">Any</option>
    % end
    % options = param.choices if param.type == 'choice' else ('true', 'false')
    % for choice in options:
    <option value="{{choice}}">{{ {'true': 'Yes', 'false': 'No'}.get(choice, choice) if param.type == 'bool' else choice }}</option>
    % end
  </select>
  % else:
  % # Dates are text: they take relative dates too (reldates.py), offered by a list.
  % kind = {'int': 'number'}.get(param.type, 'text')
  <input id="{{fid}}" name="{{param.name}}" data-field="params.{{param.name}}" type="{{kind}}"
         aria-describedby="{{described}}"
    % if param.type == 'int':
         step="1"
    % end
    % if param.type in ('date', 'datetime'):
         list="reldates-choices" autocomplete="off" spellcheck="false"
    % end
    % if param.type == 'decimal':
         inputmode="decimal"
    % end
    % if param.min is not None and param.type in ('int', 'date'):
         min="{{param.dump(param.min)}}"
    % end
    % if param.max is not None and param.type in ('int', 'date'):
         max="{{param.dump(param.max)}}"
    % end
    % if param.default is not None:
         placeholder="{{param.dump(param.default)}}"
    % elif param.type == 'date':
         placeholder="YYYY-MM-DD or yesterday, start of last month..."
    % elif param.type == 'datetime':
         placeholder="YYYY-MM-DDTHH:MM or today, -7d..."
    % end
    % if param.type == 'str':
         maxlength="1000"
    % end
         {{'required' if param.required else ''}}>
  % end
  % if param.help:
  <p class="help" id="{{fid}}-help">{{param.help}}</p>
  % end
  <p class="error" id="{{fid}}-error" hidden></p>
</div>
