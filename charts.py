"""A report's recent runs as a small inline SVG: duration as bars, rows as a
line, failures marked. Drawn on the server so the page needs no chart library."""
from xml.sax.saxutils import escape, quoteattr

from vocab import RunStatus

WIDTH, HEIGHT = 320, 96
TOP, BOTTOM, LEFT, RIGHT = 14, 14, 4, 4
MIN_SLOTS = 15
DURATION_COLOUR = '#4a6fa5'
ROWS_COLOUR = '#9a4d00'
FAILED_COLOUR = '#b91c1c'
SVG_ATTRIBUTES = ('xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
                  'viewBox="0 0 %d %d" width="%d" height="%d"' % (WIDTH, HEIGHT, WIDTH, HEIGHT))


def seconds_text(seconds):
    if seconds is None:
        return '-'
    if seconds < 60:
        return '%.1f s' % seconds
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return '%d min %02d s' % (minutes, rest)
    return '%d h %02d min' % divmod(minutes, 60)


def _duration(run):
    if run.started_at and run.finished_at:
        return max((run.finished_at - run.started_at).total_seconds(), 0.0)
    return None


def run_chart(report, runs):
    """SVG markup for `runs` (oldest first; finished runs of one report)."""
    label = 'Recent runs of %s' % report.title
    if not runs:
        return ('<svg %s aria-label=%s><text x="%d" y="%d" class="chart-empty">'
                'No finished runs yet</text></svg>'
                % (SVG_ATTRIBUTES, quoteattr(label + ': none yet'), LEFT, HEIGHT // 2))
    durations = [_duration(run) or 0.0 for run in runs]
    longest, most_rows = max(durations), max(run.rows for run in runs)
    # The labels say what the runs did; the plot scales by a number never zero.
    longest_text = seconds_text(longest if longest else None)
    rows_text = '{:,}'.format(most_rows)
    longest, most_rows = longest or 1.0, most_rows or 1
    plot_height = HEIGHT - TOP - BOTTOM
    # At least MIN_SLOTS places, newest on the right, so a few runs do not
    # become a few wide blocks.
    slots = max(len(runs), MIN_SLOTS)
    step = (WIDTH - LEFT - RIGHT) / slots
    first = slots - len(runs)
    bar = max(step * 0.6, 1.0)
    failed = [run for run in runs if run.status == RunStatus.FAILED]
    summary = '%d runs, %d failed; longest %s; most rows %s' % (
        len(runs), len(failed), longest_text, rows_text)
    parts = ['<svg %s aria-labelledby="chart-%s-title chart-%s-desc">'
             % (SVG_ATTRIBUTES, report.name, report.name),
             '<title id="chart-%s-title">%s</title>' % (report.name, escape(label)),
             '<desc id="chart-%s-desc">%s</desc>' % (report.name, escape(summary)),
             '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#6b7280" stroke-width="1"/>'
             % (LEFT, HEIGHT - BOTTOM, WIDTH - RIGHT, HEIGHT - BOTTOM)]
    points = []
    for i, (run, seconds) in enumerate(zip(runs, durations)):
        x = LEFT + (first + i) * step + (step - bar) / 2
        centre = x + bar / 2
        tip = 'Run #%d: %s, %s, %s rows' % (run.id, run.status, seconds_text(
            _duration(run)), '{:,}'.format(run.rows))
        if run.status == RunStatus.FAILED:
            parts.append(
                '<g class="failed"><title>%s</title>'
                '<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s" opacity="0.18"/>'
                '<path d="M%.1f %.1f l6 6 m0 -6 l-6 6" stroke="%s" stroke-width="2"/></g>'
                % (escape(tip + (' - ' + run.error if run.error else '')), x, TOP, bar,
                   plot_height, FAILED_COLOUR, centre - 3, HEIGHT - BOTTOM + 2,
                   FAILED_COLOUR))
        height = max(plot_height * seconds / longest, 1.0)
        parts.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s">'
                     '<title>%s</title></rect>'
                     % (x, HEIGHT - BOTTOM - height, bar, height, DURATION_COLOUR,
                        escape(tip)))
        points.append((centre, HEIGHT - BOTTOM - plot_height * run.rows / most_rows))
    if len(points) > 1:
        parts.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (
            ROWS_COLOUR, ' '.join('%.1f,%.1f' % p for p in points)))
    parts.extend('<circle cx="%.1f" cy="%.1f" r="2.5" fill="%s"/>' % (x, y, ROWS_COLOUR)
                 for x, y in points)
    parts.append('<text x="%d" y="10" class="chart-label">longest %s</text>'
                 % (LEFT, escape(longest_text)))
    parts.append('<text x="%d" y="10" text-anchor="end" class="chart-label">'
                 'most rows %s</text>' % (WIDTH - RIGHT, rows_text))
    parts.append('</svg>')
    return ''.join(parts)
