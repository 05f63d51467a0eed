% rebase('layout', title=message.header('Subject') or 'Message')
<p><a href="/outbox">← Outbox</a></p>
<h1>{{message.header('Subject') or '(no subject)'}}</h1>
<dl class="headers">
  % for key in ('From', 'To', 'Date', 'Message-ID'):
  <dt>{{key}}</dt><dd>{{message.header(key)}}</dd>
  % end
</dl>
<h2>Message</h2>
<pre class="body">{{message.text}}</pre>
<h2>Attachments</h2>
% if not files:
<p>None.</p>
% end
% for index, item in enumerate(files):
<section class="card" aria-label="Attachment {{item.filename}}">
  <p><a href="/outbox/{{message.name}}/{{index}}" download>{{item.filename}}</a>
     <small>{{item.content_type}}, {{human_size(len(item.data))}}</small></p>
  % if index in previews and previews[index]:
  % rows = previews[index]
  <div class="table-wrap">
    <table class="preview">
      <caption>First {{len(rows) - 1}} rows</caption>
      <thead><tr>
      % for cell in rows[0]:
        <th scope="col">{{cell}}</th>
      % end
      </tr></thead>
      <tbody>
      % for row in rows[1:]:
        <tr>
        % for cell in row:
          <td>{{cell}}</td>
        % end
        </tr>
      % end
      </tbody>
    </table>
  </div>
  % end
</section>
% end
