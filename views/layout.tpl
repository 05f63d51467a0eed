<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{title}} · Nightshift</title>
<link rel="stylesheet" href="/static/style.css">
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
</head>
<body data-final="{{final_statuses}}">
<a class="skip" href="#main">Skip to content</a>
<header class="top">
  <a class="brand" href="/">Nightshift</a>
  <nav aria-label="Sections">
    <a href="/#reports">Reports</a>
    <a href="/#runs">Runs</a>
    <a href="/#schedules">Schedules</a>
    % if uses_outbox:
    <a href="/outbox">Outbox</a>
    % end
  </nav>
</header>
<main id="main" tabindex="-1">
{{!base}}
</main>
<script src="/static/app.js" defer></script>
<script src="/static/reldates.js" defer></script>
<script src="/static/control.js" defer></script>
<script src="/static/bursting.js" defer></script>
<script src="/static/messages.js" defer></script>
<script src="/static/alarms.js" defer></script>
<script src="/static/formats.js" defer></script>
</body>
</html>
