% # "Send a test to me": the next slot, to one address (testsend.py; bursting.js sends it).
% ident = 'schedule-%s-test-to' % s.name
<form class="test-send" data-name="{{s.name}}" novalidate>
  <label for="{{ident}}">Send a test to</label>
  <input id="{{ident}}" name="to" data-field="to" type="email" autocomplete="email" aria-describedby="{{ident}}-help {{ident}}-error">
  <button type="submit" id="schedule-{{s.name}}-test">Send a test<span class="visually-hidden"> of {{s.name}}</span></button>
  <p class="help" id="{{ident}}-help">Its next slot, now, to this address only.</p>
  <p class="error" id="{{ident}}-error" hidden></p>
  <p class="form-status" role="status" aria-live="polite"></p>
</form>
