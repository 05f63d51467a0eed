import sqlite3

import models


def test_a_database_from_an_older_version_gets_the_new_columns(tmp_path):
    path = tmp_path / 'old.db'
    conn = sqlite3.connect(str(path))
    conn.execute('CREATE TABLE run (id INTEGER NOT NULL PRIMARY KEY, report VARCHAR(255) '
                 'NOT NULL, params TEXT NOT NULL, recipients TEXT NOT NULL, status '
                 'VARCHAR(255) NOT NULL, "rows" INTEGER NOT NULL, bytes INTEGER NOT NULL, '
                 'attempts INTEGER NOT NULL, error TEXT, "trigger" VARCHAR(255) NOT NULL, '
                 'created_at DATETIME NOT NULL, escape_formulas INTEGER NOT NULL)')
    conn.execute("INSERT INTO run VALUES (1, 'orders', '{}', '[\"a@example.org\"]', "
                 "'delivered', 5, 50, 1, NULL, 'web', '2025-01-01 00:00:00', 1)")
    conn.commit()
    conn.close()
    try:
        models.bind_database('sqlite:///%s' % path)
        run = models.Run.get_by_id(1)
        assert (run.status, run.rows, run.recipients) == ('delivered', 5, ['a@example.org'])
        assert run.slot_at is None and run.file_key is None and run.queued_at is not None
        models.Run.create(report='customers')  # every column is usable
        assert models.Run.select().count() == 2
    finally:
        models.db.close()
