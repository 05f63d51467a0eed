% rebase('layout', title='Outbox')
<h1>Outbox</h1>
<p class="lead">Mail the development backend wrote instead of sending ({{len(messages)}} message{{'' if len(messages) == 1 else 's'}}, newest first). With <code>mail_backend = smtp</code> mail goes to a real server and this page is off.</p>
<div class="table-wrap">
  <table class="stack">
    <thead><tr><th scope="col">Written</th><th scope="col">To</th><th scope="col">Subject</th><th scope="col">Size</th></tr></thead>
    <tbody>
    % if not messages:
      <tr class="empty"><td colspan="4">No messages yet. Email a report from the <a href="/">reports page</a>.</td></tr>
    % end
    % for m in messages:
      <tr>
        <td data-label="Written">{{m.header('Date')}}</td>
        <td data-label="To">{{m.header('To')}}</td>
        <td data-label="Subject"><a href="/outbox/{{m.name}}">{{m.header('Subject') or '(no subject)'}}</a></td>
        <td data-label="Size">{{human_size(m.size)}}</td>
      </tr>
    % end
    </tbody>
  </table>
</div>
