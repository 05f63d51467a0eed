"""The demo shop: a source of its own, so Nightshift has something to export
on day one. Its reports are SQL files in reports/ like any team's.

The shop is a database Nightshift made for itself (var/demo.db by default,
the `demo` source), so seeding it is the one write Nightshift makes to a
source. Rows go in through the driver's bulk paths (executemany on SQLite,
COPY on PostgreSQL): a million orders take seconds, not minutes.
"""
import datetime
import random

from peewee import (CharField, DatabaseProxy, DateTimeField, DecimalField,
                    ForeignKeyField, Model, PostgresqlDatabase)

from models import open_database, utcnow

demo_db = DatabaseProxy()


class DemoModel(Model):
    class Meta:
        database = demo_db


class Customer(DemoModel):
    name = CharField()
    email = CharField(null=True)
    created_at = DateTimeField(default=utcnow)


class Order(DemoModel):
    customer = ForeignKeyField(Customer, backref='orders', index=True)
    status = CharField(index=True)
    amount = DecimalField(max_digits=12, decimal_places=2)
    created_at = DateTimeField(default=utcnow, index=True)

    class Meta:
        table_name = 'order'


DEMO_MODELS = (Customer, Order)


def open_shop(url_or_database):
    """Bind the demo models to the shop's database (a URL, or an open Peewee
    database) and create its two tables if they are missing."""
    database = url_or_database
    if isinstance(url_or_database, str):
        database = open_database(url_or_database)
    demo_db.initialize(database)
    database.create_tables(DEMO_MODELS, safe=True)
    return database

FIRST = ['Ana', 'João', 'Zoë', 'Li', 'Mary-Jane', 'Olúwadámilọ́lá', 'Søren', 'Chloé',
         'Dmitri', 'Aiko', 'Bob', 'Fatima']
LAST = ['Silva', "O'Brien", 'Müller', 'Nguyen', 'Smith, Jr.', 'García', 'Kowalski',
        'Ivanova', 'Tanaka', 'Okafor']
STATUSES = ['paid'] * 6 + ['shipped'] * 3 + ['pending', 'cancelled', 'refunded']
EPOCH = datetime.datetime(2025, 1, 1)


def _customers(rng, count):
    for i in range(1, count + 1):
        name = '%s %s' % (rng.choice(FIRST), rng.choice(LAST))
        email = None if i % 50 == 0 else 'customer%d@example.org' % i
        created = EPOCH + datetime.timedelta(minutes=rng.randrange(0, 60 * 24 * 365))
        yield (i, name, email, created.strftime('%Y-%m-%d %H:%M:%S'))


def _orders(rng, count, customers):
    span = 60 * 24 * 365 * 2
    for i in range(1, count + 1):
        created = EPOCH + datetime.timedelta(minutes=rng.randrange(0, span))
        cents = rng.randrange(100, 100000)
        yield (i, rng.randrange(1, customers + 1), rng.choice(STATUSES),
               '%d.%02d' % divmod(cents, 100), created.strftime('%Y-%m-%d %H:%M:%S'))


def seed(customers: int = 1000, orders: int = 10000, seed_value: int = 42) -> None:
    """Insert demo customers and orders into the shop (open_shop first)."""
    rng = random.Random(seed_value)
    database = demo_db.obj
    customer_rows = _customers(rng, customers)
    order_rows = _orders(rng, orders, customers)
    if isinstance(database, PostgresqlDatabase):
        _copy(database, customer_rows, order_rows)
    else:
        with database.atomic():
            conn = database.connection()
            conn.executemany('INSERT INTO customer (id, name, email, created_at) '
                             'VALUES (?, ?, ?, ?)', customer_rows)
            conn.executemany('INSERT INTO "order" (id, customer_id, status, amount, '
                             'created_at) VALUES (?, ?, ?, ?, ?)', order_rows)


def _copy(database, customer_rows, order_rows):
    with database.atomic():
        cursor = database.cursor()
        with cursor.copy('COPY customer (id, name, email, created_at) FROM STDIN') as copy:
            for row in customer_rows:
                copy.write_row(row)
        with cursor.copy('COPY "order" (id, customer_id, status, amount, created_at) '
                         'FROM STDIN') as copy:
            for row in order_rows:
                copy.write_row(row)
        # COPY with explicit ids leaves the sequences behind.
        for table in ('customer', 'order'):
            cursor.execute("SELECT setval(pg_get_serial_sequence('\"%s\"', 'id'), "
                           "(SELECT COALESCE(MAX(id), 1) FROM \"%s\"))" % (table, table))


def is_empty() -> bool:
    return not Order.select().exists() and not Customer.select().exists()
