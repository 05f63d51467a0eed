"""PostgreSQL's COPY read in blocks (sqlexport.copy_blocks): every line once,
in order, whether libpq or psycopg meets the end of the data, and an error
that comes in the middle of the lines still stops the export with the
database's words."""
import pytest

import sources
import sqlexport


@pytest.fixture
def source(postgres_url):
    return sources.Source('postgres', postgres_url, 10)


def export(source, sql, **options):
    with sqlexport.open_query_csv(source, sql, {}, **options) as stream:
        return b''.join(stream), stream


def psql_copy(url, sql):
    """What psycopg's own Copy, a line at a time, reads for the same COPY."""
    import psycopg
    with psycopg.connect(url) as conn:
        with conn.cursor().copy('COPY (%s) TO STDOUT WITH (FORMAT csv, HEADER true)'
                               % sql) as copy:
            return b''.join(bytes(line) for line in copy)


def test_many_blocks_give_every_line_once_and_count_the_rows(source, postgres_url):
    # About 1.3 MB: several blocks of CHUNK_BYTES, lines with quotes and line
    # breaks inside values among them.
    sql = ("SELECT i AS n, CASE WHEN i %% 1000 = 0 THEN 'a \"b\"' || chr(10) || 'c' "
           "ELSE repeat('x', 1 + i %% 50) END AS s FROM generate_series(1, 50000) AS g(i)")
    data, stream = export(source, sql)  # bound (no parameters): %% is a %
    assert stream.rows == 50000 and not stream.truncated
    assert stream.bytes == len(data) > 4 * sqlexport.CHUNK_BYTES
    assert data == psql_copy(postgres_url, sql.replace('%%', '%'))


def test_the_end_met_after_a_wait_is_read_by_psycopg(source):
    # The lines are sent at once (a NOTICE, from the stop word, is flushed at
    # once and takes them along); the end comes 0.3 s later, when libpq holds
    # no line: psycopg waits for it and reads it.
    sql = ("SELECT s FROM (VALUES ('a'), ('b')) AS v(s) UNION ALL "
           "SELECT 'never' FROM generate_series(1, 1) AS g(i) "
           "WHERE numnode(plainto_tsquery('english', repeat('the', i))) > 0 "
           "OR (SELECT pg_sleep(0.3)::text) = 'no'")
    data, stream = export(source, sql, bom=True)
    assert data == b'\xef\xbb\xbfs\na\nb\n'
    assert stream.rows == 2


def test_the_end_met_by_libpq_is_read_here(source):
    # Everything comes in one packet: libpq meets the end among the lines.
    data, stream = export(source, "SELECT s FROM (VALUES ('a'), ('b')) AS v(s)", bom=True)
    assert data == b'\xef\xbb\xbfs\na\nb\n'
    assert stream.rows == 2


def test_a_literal_percent_without_parameters_reaches_the_server_once(source):
    # Binding doubles a literal % for the driver; with no parameters psycopg
    # would not merge (and undouble) them into a COPY.
    data, _ = export(source, "SELECT 7 %% 4 AS m, 'a%%' AS p")
    assert data == b"m,p\n3,a%\n"


def test_an_empty_result_is_the_header_alone(source):
    data, stream = export(source, 'SELECT 1 AS one WHERE false')
    assert (data, stream.rows) == (b'one\n', 0)


def test_an_error_among_the_lines_is_the_reports_error(source):
    # The error follows lines already sent, in the same packets (libpq meets
    # it) or after them.
    sql = 'SELECT 10 / (5000 - i) AS q FROM generate_series(1, 6000) AS g(i)'
    with pytest.raises(sources.ReportSQLError) as info:
        export(source, sql)
    assert 'division by zero' in str(info.value)
    assert export(source, 'SELECT 1 AS one')[0] == b'one\n1\n'  # the next one runs


def test_a_time_limit_hit_while_lines_stream_says_so(source):
    sql = ("SELECT repeat('x', 10000) AS s UNION ALL "
           "SELECT 'late' FROM (SELECT pg_sleep(3)) AS slept")
    with pytest.raises(sources.ReportSQLError) as info:
        export(source._replace(query_timeout=1), sql)
    assert 'time limit of 1s hit' in str(info.value)


@pytest.mark.parametrize('oid_sql, expected', [
    # Empty text is an empty cell, like NULL; a blank or trigger first goes
    # through the escape; anything else is passed as it is.
    ("''::text", b''), ('NULL::text', b''), ("'plain'::varchar", b'plain'),
    ("' =1'::text", b"' =1"), ("'-12.5'::text", b'-12.5'), ("'-x'::char(3)", b"'-x"),
    ("'\u00a0@x'::text", "'\u00a0@x".encode()), ("'{\"=\": 1}'::json", b'"{""="": 1}"'),
])
def test_text_cells_look_at_their_first_character(source, oid_sql, expected):
    data, _ = export(source, 'SELECT %s AS v' % oid_sql)
    assert data == b'v\n' + expected + b'\n'


def test_types_whose_text_is_never_a_formula_are_written_as_they_are(source):
    # No escape and no NULLIF for them: the same bytes as their text.
    sql = ("SELECT 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, '23:59:59.5'::time AS t, "
           "'01:02:03+05:30'::timetz AS tz, '08:00:2b:01:02:03'::macaddr AS m, "
           "'08:00:2b:01:02:03:04:05'::macaddr8 AS m8, '::1'::inet AS i6, '10.0.0.0/8'::cidr AS c "
           "UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL")
    data, _ = export(source, sql)
    assert data == (b'u,t,tz,m,m8,i6,c\n'
                    b'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,23:59:59.5,01:02:03+05:30,'
                    b'08:00:2b:01:02:03,08:00:2b:01:02:03:04:05,::1/128,10.0.0.0/8\n,,,,,,\n')
