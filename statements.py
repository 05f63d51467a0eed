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


def _where(database, conditions, table=None):
    # `table`: its name before each column's (in a subquery, where the
    # outer table's columns are in scope too).
    param, parts = database.param, []
    for column, op, size in conditions:
        name = quote_name(column, database)
        if table is not None:
            name = '%s.%s' % (quote_name(table, database), name)
        if op == 'in':
            parts.append('%s IN (%s)' % (name, ', '.join([param] * size)))
        elif size == 0:  # compared with None, as Peewee writes it
            parts.append('%s IS %sNULL' % (name, 'NOT ' if op == '!=' else ''))
        else:
            parts.append('%s %s %s' % (name, _OPERATORS[op][0], param))
    return ' AND '.join(parts)


class Column(str):
    """A value that is another column of the same row: update(Run,
    {'next_attempt_at': Column('queued_at')}, ...) copies it."""


@functools.lru_cache(maxsize=256)
def _update_sql(database, table, columns, conditions, owner=None, owner_conditions=()):
    # A column given as (name, other) takes the other column's value. With
    # `owner`, only while a row of that table meets owner_conditions (its
    # name before each of its columns: the outer table's are in scope too).
    sets = ', '.join('%s = %s' % (quote_name(column, database), database.param)
                     if isinstance(column, str) else
                     '%s = %s' % (quote_name(column[0], database), quote_name(column[1], database))
                     for column in columns)
    sql = 'UPDATE %s SET %s WHERE %s' % (quote_name(table, database), sets,
                                         _where(database, conditions))
    if owner is not None:
        sql += ' AND EXISTS (SELECT 1 FROM %s WHERE %s)' % (
            quote_name(owner, database), _where(database, owner_conditions, owner))
    return sql


@functools.lru_cache(maxsize=256)
def _select_sql(database, table, columns, conditions):
    return 'SELECT %s FROM %s WHERE %s LIMIT 1' % (
        ', '.join(quote_name(column, database) for column in columns),
        quote_name(table, database), _where(database, conditions))


@functools.lru_cache(maxsize=64)
def _insert_sql(database, table, columns, returning):
    sql = 'INSERT INTO %s (%s) VALUES (%s)' % (
        quote_name(table, database), ', '.join(quote_name(c, database) for c in columns),
        ', '.join([database.param] * len(columns)))
    return sql + (' RETURNING %s' % quote_name(returning, database) if returning else '')


def _shape_and_params(model, conditions):
    """Each condition (field name, operator, value) as (column, operator,
    how many values) and its converted values. `= None` is IS NULL and
    `!= None` IS NOT NULL, as in Peewee."""
    fields, shape, params = model._meta.fields, [], []
    for name, op, value in conditions:
        field = fields[name]
        if op not in _OPERATORS:
            raise ValueError('statements: no operator %r' % op)
        if op == 'in':
            values = list(value)
            if not values or any(v is None for v in values):
                raise ValueError('statements: %s in %r' % (name, value))
        else:
            values = [] if value is None else [value]
        shape.append((field.column_name, op, len(values)))
        params += [field.db_value(v) for v in values]
    return tuple(shape), params


def where(model, conditions):
    """The conditions (field name, operator, value) as a Peewee expression,
    for a statement built by Peewee."""
    clauses = [_OPERATORS[op][1](getattr(model, name), value) for name, op, value in conditions]
    return functools.reduce(operator.and_, clauses)


def update(model, values, *conditions) -> int:
    """UPDATE `model` SET `values` (field name -> value) WHERE every
    condition (field name, '=' or '!=' or 'in', value) holds. Returns the
    rows changed, as Peewee's Update.execute does."""
    if not conditions:
        raise ValueError('statements.update: a WHERE is required')
    if any(isinstance(value, Node) for value in values.values()):
        return model.update(**values).where(where(model, conditions)).execute()
    return _update(model, values, conditions)


def update_owned(model, values, conditions, owner, owner_conditions) -> int:
    """update(model, values, *conditions), made only while a row of `owner`
    meets `owner_conditions`: one statement, where a fenced write to the
    owner and this one took a transaction and two. Returns the rows changed
    (none when the owner's row does not meet them)."""
    return _update(model, values, conditions, owner, owner_conditions)


def _update(model, values, conditions, owner=None, owner_conditions=()):
    fields = model._meta.fields
    shape, params = _shape_and_params(model, conditions)
    owner_shape = ()
    if owner is not None:
        owner_shape, owner_params = _shape_and_params(owner, owner_conditions)
        params += owner_params
    names = tuple(values)
    database = db.obj
    sql = _update_sql(database, model._meta.table_name, tuple(
        (fields[name].column_name, fields[values[name]].column_name)
        if isinstance(values[name], Column) else fields[name].column_name for name in names),
        shape, None if owner is None else owner._meta.table_name, owner_shape)
    params = [fields[name].db_value(values[name]) for name in names
              if not isinstance(values[name], Column)] + params
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


def insert(instance):
    """Save `instance`, a new row whose id the database gives, as
    Model.save(force_insert=True) does: the values it holds (the ones given
    and the fields' defaults), its id set from the database. Returns it."""
    meta = type(instance)._meta
    data, key = instance.__data__, meta.primary_key
    if not meta.auto_increment or data.get(key.name) is not None \
            or any(isinstance(value, Node) for value in data.values()):
        instance.save(force_insert=True)
        return instance
    names = tuple(name for name in meta.sorted_field_names if name in data)
    database = db.obj
    returning = key.column_name if database.returning_clause else None
    sql = _insert_sql(database, meta.table_name,
                      tuple(meta.fields[name].column_name for name in names), returning)
    cursor = database.execute_sql(sql, [meta.fields[name].db_value(data[name])
                                        for name in names])
    instance._pk = cursor.fetchone()[0] if returning else cursor.lastrowid
    instance._dirty.clear()
    return instance
