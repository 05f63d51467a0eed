"""The report catalogue. Add a report with one decorated function that
returns a Peewee query; its selected columns become the CSV header."""
from peewee import JOIN, fn

from models import Customer, Order
from params import InputError, Param, parse_params

ORDER_STATUSES = ('pending', 'paid', 'shipped', 'cancelled', 'refunded')


class UnknownReport(LookupError):
    pass


class Report:
    def __init__(self, name, title, build_query, params=(), description='',
                 check=None, escape_formulas=True):
        self.name = name
        self.check = check
        # False for a report whose text is meant to be formulas, or is read by
        # programs, not spreadsheets; a request can still choose either way.
        self.escape_formulas = escape_formulas
        self.title = title
        self.build_query = build_query
        self.params = tuple(params)
        self.description = description

    def parse(self, raw):
        """Raw values -> typed values, or InputError naming the field."""
        typed = parse_params(self.params, raw)
        if self.check is not None:
            self.check(**typed)
        return typed

    def query(self, typed):
        return self.build_query(**typed)

    def describe(self):
        return {'name': self.name, 'title': self.title,
                'description': self.description,
                'params': [p.describe() for p in self.params]}


class Registry:
    def __init__(self):
        self._reports = {}

    def report(self, name, title, params=(), description=None, check=None,
               escape_formulas=True):
        """Decorator: register a query-building function as a report.

        `check(**typed)` may raise InputError for rules across parameters.
        """
        def decorator(build_query):
            if name in self._reports:
                raise ValueError('report %r is defined twice' % name)
            reserved = {p.name for p in params} & {'escape_formulas', 'bom'}
            if reserved:
                raise ValueError('report %r: parameter names %s are reserved for output '
                                 'options' % (name, ', '.join(sorted(reserved))))
            doc = description if description is not None else (build_query.__doc__ or '')
            self._reports[name] = Report(name, title, build_query, params,
                                         ' '.join(doc.split()), check, escape_formulas)
            return build_query
        return decorator

    def get(self, name):
        try:
            return self._reports[name]
        except (KeyError, TypeError):
            raise UnknownReport(name)

    def __iter__(self):
        return iter(sorted(self._reports.values(), key=lambda r: r.name))


registry = Registry()
report = registry.report


def _since_before_until(since=None, until=None, **_):
    if since and until and since >= until:
        raise InputError('params.until', 'must be after since')


@report('orders', 'Orders', check=_since_before_until, params=[
    Param('since', 'date', help='First day included (UTC).'),
    Param('until', 'date', help='First day not included (UTC).'),
    Param('status', 'choice', choices=ORDER_STATUSES, help='Only orders in this status.'),
])
def orders(since=None, until=None, status=None):
    """One row per order, with the customer's name and email."""
    query = (Order
             .select(Order.id, Order.created_at,
                     Customer.name.alias('customer_name'),
                     Customer.email.alias('customer_email'),
                     Order.status, Order.amount)
             .join(Customer)
             .order_by(Order.id))
    if since:
        query = query.where(Order.created_at >= since)
    if until:
        query = query.where(Order.created_at < until)
    if status:
        query = query.where(Order.status == status)
    return query



@report('customers', 'Customers', params=[
    Param('min_orders', 'int', default=0, min=0, help='Only customers with at least this many orders.'),
])
def customers(min_orders=0):
    """One row per customer with their order count and total spent."""
    order_count = fn.COUNT(Order.id)
    query = (Customer
             .select(Customer.id, Customer.name, Customer.email,
                     order_count.alias('orders'),
                     fn.COALESCE(fn.SUM(Order.amount), 0).alias('total_spent'))
             .join(Order, JOIN.LEFT_OUTER)
             .group_by(Customer.id, Customer.name, Customer.email)
             .order_by(Customer.id))
    if min_orders:
        query = query.having(order_count >= min_orders)
    return query
