% # Acting on one run (control.py through the API; static/control.js sends the clicks).
% if run.rerun_of:
<br><small>re-run of <a href="#run-{{run.rerun_of}}">#{{run.rerun_of}}</a></small>
% end
% if run.batch_of:
<br><small>with run <a href="#run-{{run.batch_of}}">#{{run.batch_of}}</a>'s query</small>
% end
% if run.trigger == 'download' and run.requested_by:
<br><small>downloaded by {{run.requested_by}}</small>
% end
% if run.trigger != 'download' and run.status in ('queued', 'running'):
<br><button type="button" data-control="cancel" data-control-run="{{run.id}}" id="run-{{run.id}}-cancel">Cancel<span class="visually-hidden"> run {{run.id}}</span></button>
% elif run.trigger != 'download' and run.status in ('failed', 'cancelled'):
<br><button type="button" data-control="rerun" data-control-run="{{run.id}}" id="run-{{run.id}}-rerun">Re-run<span class="visually-hidden"> run {{run.id}}</span></button>
% end
