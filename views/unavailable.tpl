% rebase('layout', title='Unavailable')
<h1>The database is not answering</h1>
<p>Nightshift cannot read its runs and schedules right now. Nothing you sent before is lost: runs are kept in the database and go on when it is back. Try again in a few seconds, or <a href="/">reload this page</a>.</p>
