% if s.split_by:
<br><small>each recipient in <code>{{s.split_by}}</code> gets their own rows</small>
% end
