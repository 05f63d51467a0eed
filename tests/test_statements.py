"""statements.py runs the statements Peewee would, its SQL text made once:
each is checked against Peewee's own on the same rows, on every state
database (SQLite, PostgreSQL, MariaDB)."""
import datetime

import pytest

import demo
import models
from conftest import _emptied
import statements
import turns
from models import Delivery, Run
from vocab import DeliveryStatus, RunStatus, Trigger


@pytest.fixture(params=['sqlite', 'postgres', 'mariadb'])
def state(request, tmp_path):
    if request.param == 'sqlite':
        url = 'sqlite:///%s' % (tmp_path / 'state.db')
    else:
        url = request.getfixturevalue('%s_url' % request.param)
    database = models.bind_database(url)
    demo.open_shop(database)  # _emptied empties the demo shop's tables too
    # Empty before and after: the session's other tests share these
    # databases (conftest's `database` fixture empties only tables it made).
    assert _emptied(database)
    yield database
    assert _emptied(database)
    database.close()


def _runs(count, **values):
    return [Run.create(report='orders', recipients=['a@example.org'], **values).id
            for _ in range(count)]


def _row(run_id):
    return Run.select().where(Run.id == run_id).dicts().get()


def test_an_update_changes_what_peewee_changes_and_counts_the_same(state):
    mine, theirs, other = _runs(3, status=RunStatus.RUNNING, attempts=1)
    at = datetime.datetime(2026, 11, 29, 5, 30, 1, 250000)
    values = {'status': RunStatus.DELIVERED, 'finished_at': at, 'error': None,
              'params': {'day': '2026-11-28', 'é': [1, 2]}, 'rows': 12, 'truncated': True,
              'format': 'xlsx', 'bytes': 345}  # reserved words as column names too
    fenced = (('id', '=', mine), ('status', '=', RunStatus.RUNNING), ('attempts', '=', 1))
    assert statements.update(Run, values, *fenced) == 1
    assert Run.update(**values).where(Run.id == theirs, Run.status == RunStatus.RUNNING,
                                      Run.attempts == 1).execute() == 1
    got, expected = _row(mine), _row(theirs)
    for own in ('id', 'created_at', 'queued_at', 'message_token'):
        got.pop(own), expected.pop(own)
    assert got == expected
    assert got['finished_at'] == at and got['params'] == values['params']
    assert _row(other)['status'] == RunStatus.RUNNING  # only the row asked for
    # The fence: no longer running, so nothing changes and 0 is counted.
    assert statements.update(Run, {'error': 'late'}, *fenced) == 0
    assert _row(mine)['error'] is None


def test_in_and_not_equal(state):
    ids = _runs(4)
    run = ids[0]
    deliveries = [Delivery.create(run=run, address='p%d@example.org' % i,
                                  status=DeliveryStatus.SENT if i == 0 else
                                  DeliveryStatus.PENDING).id for i in range(4)]
    assert statements.update(Delivery, {'status': DeliveryStatus.SENDING},
                             ('id', 'in', deliveries[:3]),
                             ('status', '!=', DeliveryStatus.SENT)) == 2
    assert [d.status for d in Delivery.select().order_by(Delivery.id)] == [
        DeliveryStatus.SENT, DeliveryStatus.SENDING, DeliveryStatus.SENDING,
        DeliveryStatus.PENDING]


def test_an_sql_expression_is_handed_to_peewee(state):
    run, = _runs(1, attempts=2)
    assert statements.update(Run, {'attempts': Run.attempts + 1, 'error': 'x'},
                             ('id', '=', run)) == 1
    assert (_row(run)['attempts'], _row(run)['error']) == (3, 'x')


def test_none_in_a_condition_is_null_as_in_peewee(state):
    plain, led = _runs(2)
    Run.update(batch_of=plain).where(Run.id == led).execute()
    assert statements.update(Run, {'error': 'alone'}, ('batch_of', '=', None)) == 1
    assert statements.update(Run, {'error': 'led'}, ('batch_of', '!=', None)) == 1
    assert (_row(plain)['error'], _row(led)['error']) == ('alone', 'led')
    assert statements.select_one(Run, ('id',), ('batch_of', '=', None)) == (plain,)
    with pytest.raises(ValueError):
        statements.update(Run, {'error': 'x'})
    with pytest.raises(ValueError):
        statements.update(Run, {'error': 'x'}, ('id', 'in', []))


def test_select_one_gives_python_values(state):
    at = datetime.datetime(2026, 1, 2, 3, 4, 5)
    run, = _runs(1, status=RunStatus.QUEUED, params={'a': 1}, slot_at=at)
    assert statements.select_one(Run, ('status', 'report', 'params', 'slot_at'),
                                 ('id', '=', run)) == (RunStatus.QUEUED, 'orders', {'a': 1}, at)
    assert statements.select_one(Run, ('status',), ('id', '=', run + 100)) is None


def test_turns_in_progress_counts_as_holding_does(state):
    leader, companion, lone = _runs(3, status=RunStatus.RUNNING)
    Run.update(batch_of=leader).where(Run.id.in_([leader, companion])).execute()
    _runs(1, status=RunStatus.RUNNING, trigger=Trigger.DOWNLOAD)
    _runs(1, status=RunStatus.QUEUED)
    assert turns.in_progress('orders') == turns.holding('orders').scalar() == 2
    assert turns.in_progress('customers') == 0


def test_insert_saves_what_create_saves(state):
    import peewee
    slot = datetime.datetime(2026, 11, 29, 7, 0)
    values = dict(report='orders', params={'day': '2026-11-28'}, recipients=['a@example.org'],
                  trigger=Trigger.SCHEDULE, schedule='daily', slot_at=slot, bom=False,
                  subject='{{ title }}', format='csv.gz')
    mine = statements.insert(Run(**values))
    theirs = Run.create(**dict(values, schedule='other'))
    assert (mine.id, theirs.id) == (theirs.id - 1, theirs.id) and not mine.is_dirty()
    got, expected = _row(mine.id), _row(theirs.id)
    for own in ('id', 'created_at', 'queued_at', 'message_token', 'schedule'):
        got.pop(own), expected.pop(own)
    assert got == expected and got['slot_at'] == slot and got['params'] == values['params']
    delivery = statements.insert(Delivery(run=mine, address='a@example.org'))
    assert Delivery.get_by_id(delivery.id).run_id == mine.id
    # A slot's second run is refused by the unique index, as Peewee's would be.
    with pytest.raises(peewee.IntegrityError):
        with models.db.atomic():
            statements.insert(Run(**values))
    assert Run.select().count() == 2


def test_a_column_value_copies_another_column_of_the_row(state):
    waiting, running = _runs(2)
    Run.update(status=RunStatus.RUNNING).where(Run.id == running).execute()
    assert turns.wait_for_turn(waiting) and not turns.wait_for_turn(running)
    row = _row(waiting)
    assert row['next_attempt_at'] == row['queued_at'] is not None
    assert _row(running)['next_attempt_at'] is None
    assert [r.id for r in Run.select().where(turns.waiting_for_turn())] == [waiting]


def test_an_update_owned_changes_rows_only_while_the_owner_meets_its_conditions(state):
    mine, other = _runs(2, status=RunStatus.RUNNING, attempts=2)
    deliveries = [Delivery.create(run=run_id, address='%s@example.org' % name).id
                  for run_id in (mine, other) for name in ('a', 'b')]
    mine_ids = deliveries[:2]
    fence = (('id', '=', mine), ('status', '=', RunStatus.RUNNING), ('attempts', '=', 2))
    changed = statements.update_owned(Delivery, {'status': DeliveryStatus.SENDING},
                                      (('id', 'in', mine_ids),), Run, fence)
    assert changed == 2
    statuses = dict(Delivery.select(Delivery.id, Delivery.status).tuples())
    assert [statuses[i] for i in deliveries] == [DeliveryStatus.SENDING] * 2 \
        + [DeliveryStatus.PENDING] * 2
    # Another attempt owns the run now: nothing changes, 0 is counted.
    Run.update(attempts=3).where(Run.id == mine).execute()
    assert statements.update_owned(Delivery, {'status': DeliveryStatus.SENT},
                                   (('id', 'in', mine_ids),), Run, fence) == 0
    assert set(Delivery.select(Delivery.status).where(Delivery.id.in_(mine_ids))
               .tuples()) == {(DeliveryStatus.SENDING,)}
