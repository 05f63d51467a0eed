// The file format choice (views/formats_field.tpl): the download button
// says what it will download. app.js sends the choice with the form
// (data-extra) and adds it to a download's address.
(function () {
  'use strict';

  var LABELS = {'csv': 'CSV', 'csv.gz': 'CSV.GZ', 'xlsx': 'XLSX'};

  function label(form) {
    var select = form.querySelector('select[data-field="format"]');
    var button = form.querySelector('[data-download-label]');
    if (!select || !button) { return; }
    button.textContent = 'Download ' + (LABELS[select.value] || 'CSV');
  }

  document.querySelectorAll('form.report-form').forEach(function (form) {
    var select = form.querySelector('select[data-field="format"]');
    if (!select) { return; }
    select.addEventListener('change', function () { label(form); });
    label(form);  // a browser may keep the choice across a reload
  });
})();
