% rebase('layout', title='Not found')
<h1>No such message</h1>
<p>There is no message or attachment called “{{name}}” in the outbox. <a href="/outbox">Back to the outbox</a>.</p>
