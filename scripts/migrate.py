#!/usr/bin/env python
"""Nightshift's own schema: where it is, and bringing it up to date.

    python scripts/migrate.py            # the steps applied and the steps missing
    python scripts/migrate.py --apply    # apply the missing steps (back up first)

Only tables named nightshift_* are ever created or changed (see migrations.py).
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import migrations  # noqa: E402
from models import bind_database  # noqa: E402
from settings import SettingsError, load_settings, mask_url  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--apply', action='store_true', help='apply the missing steps')
    parser.add_argument('--config', help='config file')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        sys.exit('migrate: bad settings: %s' % exc)
    database = bind_database(settings.database_url, create=False)
    done = migrations.applied_versions(database)
    print('database: %s' % mask_url(settings.database_url))
    for version, name, _ in migrations.MIGRATIONS:
        print('  %s %d: %s' % ('applied' if version in done else 'MISSING', version, name))
    missing = migrations.pending(database)
    if not missing:
        print('up to date (version %d)' % migrations.LATEST)
        return
    if not args.apply:
        print('%d step(s) missing; run again with --apply' % len(missing))
        sys.exit(2)
    applied = migrations.migrate(database, auto=True)
    print('applied %s; now at version %d' % (', '.join(map(str, applied)) or 'nothing',
                                             migrations.LATEST))


if __name__ == '__main__':
    main()
