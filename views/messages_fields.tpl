% from msgtemplates import DEFAULTS, VARIABLES
% from vocab import SendRule
<details class="message-fields" id="{{prefix}}-message">
  <summary>Message <small>(subject, text, file name, when to send)</small></summary>
  <div class="field">
    <label for="{{prefix}}-subject">Subject</label>
    <input id="{{prefix}}-subject" name="subject" data-field="subject" data-extra type="text" autocomplete="off"
           spellcheck="false" placeholder="{{DEFAULTS['subject']}}" aria-describedby="{{prefix}}-message-help {{prefix}}-subject-error">
    <p class="error" id="{{prefix}}-subject-error" hidden></p>
  </div>
  <div class="field">
    <label for="{{prefix}}-body">Body text</label>
    <textarea id="{{prefix}}-body" name="body" data-field="body" data-extra rows="6" spellcheck="false"
              placeholder="{{DEFAULTS['body']}}" aria-describedby="{{prefix}}-message-help {{prefix}}-body-error"></textarea>
    <p class="error" id="{{prefix}}-body-error" hidden></p>
  </div>
  <div class="field">
    <label for="{{prefix}}-attachment_name">Attachment</label>
    <input id="{{prefix}}-attachment_name" name="attachment_name" data-field="attachment_name" data-extra type="text"
           autocomplete="off" spellcheck="false" placeholder="{{DEFAULTS['attachment_name']}}"
           aria-describedby="{{prefix}}-attachment_name-help {{prefix}}-attachment_name-error">
    <p class="help" id="{{prefix}}-attachment_name-help">Without the extension: .csv (or .zip) is added.</p>
    <p class="error" id="{{prefix}}-attachment_name-error" hidden></p>
  </div>
  <div class="field">
    <label for="{{prefix}}-send_rule">Send</label>
    <select id="{{prefix}}-send_rule" name="send_rule" data-field="send_rule" data-extra aria-describedby="{{prefix}}-send_rule-error">
      <option value="{{SendRule.ALWAYS}}">always</option>
      <option value="{{SendRule.ROWS}}">only when there are rows (else the run is skipped)</option>
      <option value="{{SendRule.NOTICE}}">a short “no data” notice when there are no rows</option>
    </select>
    <p class="error" id="{{prefix}}-send_rule-error" hidden></p>
  </div>
  <p class="help" id="{{prefix}}-message-help">Empty means the default shown. Templates may use
    % for name in sorted(VARIABLES['body']):
    <code>{{'{{ ' + name + ' }}'}}</code>
    % end
    (the file name: not <code>took</code>, <code>file_name</code>, <code>file_note</code>, <code>link</code>, <code>link_expires</code>, <code>cut_note</code>).</p>
  <div class="buttons">
    <button type="button" data-action="preview-message" id="{{prefix}}-message-preview">Preview the next message</button>
  </div>
  <div class="message-preview" id="{{prefix}}-message-preview-box" role="status" aria-live="polite" hidden>
    <p><strong>Subject:</strong> <span class="preview-subject"></span></p>
    <p><strong>File:</strong> <code class="preview-name"></code></p>
    <pre class="preview-body"></pre>
    <p class="preview-notice help" hidden></p>
    <p class="preview-error error" hidden></p>
  </div>
</details>
