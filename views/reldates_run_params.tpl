% # The parameter values a run used, with the relative dates asked for.
% if any(v not in (None, '') for v in (run.params or {}).values()):
<br><small class="run-params" id="run-{{run.id}}-params">{{describe_params(run.params, run.asked_params, run.params_timezone)}}</small>
% end
