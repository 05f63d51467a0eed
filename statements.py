"""The statements a run makes many times, with their SQL text made once.

Peewee builds a query's SQL anew on every execute. For the one-row UPDATEs
and SELECTs that serving a run is made of, that building was most of their
cost: in a burst of 1,000 small runs (scripts/bench.py), py-spy found 29%
of the consumer's time in Peewee's SQL building against 4% in running the
statements. Here the same statements run through the same connection
(db.execute_sql, so reconnects and transactions behave as with Peewee),
their text cached per shape (table, columns, operators) and database, and
their values converted by each field's db_value as Peewee converts them.

A value that is an SQL expression (a Peewee node: `Run.attempts + 1`) is
not a shape this module writes: such a statement is handed to Peewee.
"""
import functools
import operator

from peewee import Node

from models import db, quote_name

# Operator: (SQL, Peewee's spelling, for a statement handed to Peewee).
_OPERATORS = {
    '=': ('=', operator.eq),
    '!=': ('<>', operator.ne),
    'in': ('IN', lambda field, values: field.in_(values)),
}


def _where(database, conditions):
    param, parts = database.param, []
    for column, op, size in conditions:
        if op == 'in':
            parts.append('%s IN (%s)' % (quote_name(column, database), ', '.join([param] * size)))
        else:
            parts.append('%s %s %s' % (quote_name(column, database), _OPERATORS[op][0], param))
    return ' AND '.join(parts)


@functools.lru_cache(maxsize=256)
def _update_sql(database, table, columns, conditions):
    sets = ', '.join('%s = %s' % (quote_name(column, database), database.param)
                     for column in columns)
    return 'UPDATE %s SET %s WHERE %s' % (quote_name(table, database), sets,
                                          _where(database, conditions))


@functools.lru_cache(maxsize=256)
def _select_sql(database, table, columns, conditions):
    return 'SELECT %s FROM %s WHERE %s' % (
        ', '.join(quote_name(column, database) for column in columns),
        quote_name(table, database), _where(database, conditions))


def _shape_and_params(model, conditions):
    """Each condition (field name, operator, value) as (column, operator,
    how many values) and its converted values. None is not a value here:
    `= NULL` matches nothing, and IS NULL is a different statement."""
    fields, shape, params = model._meta.fields, [], []
    for name, op, value in conditions:
        field = fields[name]
        values = list(value) if op == 'in' else [value]
        if any(v is None for v in values) or op not in _OPERATORS:
            raise ValueError('statements: no plain SQL for %s %s %r' % (name, op, value))
        shape.append((field.column_name, op, len(values) if op == 'in' else 1))
        params += [field.db_value(v) for v in values]
    return tuple(shape), params


def _peewee_where(model, conditions):
    clauses = [_OPERATORS[op][1](getattr(model, name), value) for name, op, value in conditions]
    return functools.reduce(operator.and_, clauses)


def update(model, values, *conditions) -> int:
    """UPDATE `model` SET `values` (field name -> value) WHERE every
    condition (field name, '=' or '!=' or 'in', value) holds. Returns the
    rows changed, as Peewee's Update.execute does."""
    if any(isinstance(value, Node) for value in values.values()):
        return model.update(**values).where(_peewee_where(model, conditions)).execute()
    if not conditions:
        raise ValueError('statements.update: a WHERE is required')
    fields = model._meta.fields
    shape, where_params = _shape_and_params(model, conditions)
    names = tuple(values)
    database = db.obj
    sql = _update_sql(database, model._meta.table_name,
                      tuple(fields[name].column_name for name in names), shape)
    params = [fields[name].db_value(values[name]) for name in names] + where_params
    return database.rows_affected(database.execute_sql(sql, params))


def select_one(model, names, *conditions):
    """The first row (a tuple of Python values, as the fields give them) of
    `names` of `model` where every condition holds; None when there is none."""
    fields = model._meta.fields
    shape, params = _shape_and_params(model, conditions)
    database = db.obj
    sql = _select_sql(database, model._meta.table_name,
                      tuple(fields[name].column_name for name in names), shape)
    row = database.execute_sql(sql, params).fetchone()
    if row is None:
        return None
    return tuple(fields[name].python_value(value) for name, value in zip(names, row))
