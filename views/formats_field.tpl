% # The file format of a download, an emailed run or a schedule (formats.py).
% fid = prefix + '-format'
<div class="field">
  <label for="{{fid}}">File format</label>
  <select id="{{fid}}" name="format" data-field="format" data-extra aria-describedby="{{fid}}-help {{fid}}-error">
    <option value="csv" selected>CSV</option>
    <option value="csv.gz">CSV, gzipped (.csv.gz)</option>
    <option value="xlsx">Excel workbook (.xlsx)</option>
  </select>
  <p class="help" id="{{fid}}-help">{{help}}</p>
  <p class="error" id="{{fid}}-error" hidden></p>
</div>
