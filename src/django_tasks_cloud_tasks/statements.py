"""Statements built once, for the writes the result store makes on every enqueue and delivery.

The ORM builds each query anew: about 200 µs of Python per INSERT or UPDATE, several times what
SQLite needs to run it, which made the store's writes cost more than the whole request they are
part of. The store builds those writes with ``Insert`` and ``Update`` instead; everything else it
does (reads, the admin, pruning, the rare paths of a claim) goes through the ORM.

What stays Django's: the table and column names come from the model and are quoted by the database
backend, and they are all that goes into the SQL text; every value is a parameter, prepared by its
field for the database in use (``get_db_prep_save``, as the ORM does); and the statement runs on the
alias's connection, so routers, transactions and ``connection.execute_wrapper`` hooks see it like
any query.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.db import connections, models, transaction

# A field and its column's name. (Evaluated lazily: Field is generic only to type checkers.)
type _Column = tuple[models.Field[Any, Any], str]


class _Statement:
    """A statement on one model's table, its text built once per database vendor."""

    def __init__(self, model: type[models.Model]) -> None:
        self._model = model
        self._text: dict[str, str] = {}  # Only the quoting differs between vendors.

    def _execute(self, using: str, fields: Sequence[_Column], values: Sequence[Any]) -> int:
        connection = connections[using]
        params = [
            field.get_db_prep_save(value, connection)
            for (field, _), value in zip(fields, values, strict=True)
        ]
        sql = self._text.get(connection.vendor)
        if sql is None:
            sql = self._text[connection.vendor] = self._build(connection.ops.quote_name)
        # Like the ORM: an error inside atomic() marks the transaction for rollback.
        with transaction.mark_for_rollback_on_error(using), connection.cursor() as cursor:
            cursor.execute(sql, params)
            return int(cursor.rowcount)

    def _build(self, quote: Callable[[str], str]) -> str:
        raise NotImplementedError

    def _column(self, name: str) -> _Column:
        field = self._model._meta.get_field(name)
        if not isinstance(field, models.Field) or field.column is None:
            raise TypeError(f"{self._model.__name__}.{name} is not a column")
        return field, field.column


class Insert(_Statement):
    """``INSERT INTO <table> (<every column>) VALUES (…)`` for one model instance."""

    def __init__(self, model: type[models.Model]) -> None:
        super().__init__(model)
        self._fields = [self._column(field.name) for field in model._meta.local_concrete_fields]

    def execute(self, using: str, instance: models.Model) -> None:
        """Insert ``instance`` as a new row; IntegrityError if its primary key is taken."""
        if not isinstance(instance, self._model):
            raise TypeError(f"expected a {self._model.__name__}, not {type(instance).__name__}")
        # What the ORM saves for a new row: pre_save() fills in defaults such as auto_now.
        values = [field.pre_save(instance, add=True) for field, _ in self._fields]
        self._execute(using, self._fields, values)
        instance._state.adding, instance._state.db = False, using

    def _build(self, quote: Callable[[str], str]) -> str:
        columns = ", ".join(quote(column) for _, column in self._fields)
        placeholders = ", ".join(["%s"] * len(self._fields))
        table = quote(self._model._meta.db_table)
        return f"INSERT INTO {table} ({columns}) VALUES ({placeholders})"  # noqa: S608


class Update(_Statement):
    """``UPDATE <table> SET <fields> = … WHERE <fields> = … AND …`` for one model."""

    def __init__(
        self, model: type[models.Model], fields: Sequence[str], where: Sequence[str]
    ) -> None:
        super().__init__(model)
        self._set = [self._column(name) for name in fields]
        self._where = [self._column(name) for name in where]

    def execute(self, using: str, values: Sequence[Any], where: Sequence[Any]) -> int:
        """Set the fields to ``values`` in the rows that match ``where``; how many rows changed.

        ``where`` values cannot be None: ``column = NULL`` matches nothing (use the ORM's
        ``isnull`` for that).
        """
        if len(values) != len(self._set) or len(where) != len(self._where):
            raise ValueError(f"expected {len(self._set)} values and {len(self._where)} conditions")
        if any(value is None for value in where):
            raise ValueError("a WHERE value of None would match no row")
        return self._execute(using, [*self._set, *self._where], [*values, *where])

    def _build(self, quote: Callable[[str], str]) -> str:
        assignments = ", ".join(f"{quote(column)} = %s" for _, column in self._set)
        conditions = " AND ".join(f"{quote(column)} = %s" for _, column in self._where)
        table = quote(self._model._meta.db_table)
        return f"UPDATE {table} SET {assignments} WHERE {conditions}"  # noqa: S608
