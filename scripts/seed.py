#!/usr/bin/env python
"""Fill the demo shop (the `demo` source) with customers and orders.

    python scripts/seed.py [--orders N] [--customers N] [--if-empty]

The shop is Nightshift's own demo database (var/demo.db unless the `demo`
source says otherwise); it is the only source Nightshift ever writes to.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import demo  # noqa: E402
from settings import SettingsError, load_settings  # noqa: E402
from sources import UnknownSource  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--orders', type=int, default=10000)
    parser.add_argument('--customers', type=int, default=1000)
    parser.add_argument('--if-empty', action='store_true',
                        help='do nothing when the shop already has data')
    parser.add_argument('--config', help='config file')
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        source = settings.source('demo')
    except SettingsError as exc:
        sys.exit('seed: bad settings: %s' % exc)
    except UnknownSource:
        sys.exit('seed: no `demo` source is configured ([source:demo] in config.ini, or '
                 'NIGHTSHIFT_SOURCE_DEMO_URL)')
    demo.open_shop(source.url)
    if not demo.is_empty():
        # The demo rows have fixed ids (the same data every time), so a second
        # seed would collide with the first; say so instead of a traceback.
        message = ('seed: the demo shop already has %d customers and %d orders; demo data '
                   'goes only into an empty shop' % (demo.Customer.select().count(),
                                                     demo.Order.select().count()))
        if args.if_empty:
            print(message + '; leaving it alone')
            return
        sys.exit(message + ' (delete %s, or point NIGHTSHIFT_SOURCE_DEMO_URL at a new '
                 'database)' % source.url)
    started = time.perf_counter()
    demo.seed(customers=args.customers, orders=args.orders)
    print('seed: %d customers, %d orders in %.1f s' % (
        args.customers, args.orders, time.perf_counter() - started))


if __name__ == '__main__':
    main()
