% rebase('layout', title='No outbox')
<h1>No outbox here</h1>
<p>This server sends mail over SMTP (<code>mail_backend = smtp</code>), so there is no outbox to show. The outbox is the development backend: it writes each message to a folder instead of sending it.</p>
