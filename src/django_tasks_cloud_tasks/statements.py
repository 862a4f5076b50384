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

from collections.abc import Sequence
from typing import Any

from django.db import connections, models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper


class Insert:
    """``INSERT INTO <table> (<every column>) VALUES (…)`` for one model instance."""

    def __init__(self, model: type[models.Model]) -> None:
        self._model = model
        self._fields = [_column(model, field.name) for field in model._meta.local_concrete_fields]
        self._sql: dict[str, str] = {}

    def execute(self, using: str, instance: models.Model) -> None:
        """Insert ``instance`` as a new row; IntegrityError if its primary key is taken."""
        if not isinstance(instance, self._model):
            raise TypeError(f"expected a {self._model.__name__}, not {type(instance).__name__}")
        connection = connections[using]
        # What the ORM saves for a new row: pre_save() fills in defaults such as auto_now.
        params = [
            field.get_db_prep_save(field.pre_save(instance, add=True), connection)
            for field, _ in self._fields
        ]
        with transaction.mark_for_rollback_on_error(using), connection.cursor() as cursor:
            cursor.execute(self._statement(connection), params)
        instance._state.adding, instance._state.db = False, using

    def _statement(self, connection: BaseDatabaseWrapper) -> str:
        sql = self._sql.get(connection.vendor)
        if sql is None:
            quote = connection.ops.quote_name
            columns = ", ".join(quote(column) for _, column in self._fields)
            placeholders = ", ".join(["%s"] * len(self._fields))
            table = quote(self._model._meta.db_table)
            sql = self._sql[connection.vendor] = (
                f"INSERT INTO {table} ({columns}) VALUES ({placeholders})"  # noqa: S608
            )
        return sql


class Update:
    """``UPDATE <table> SET <fields> = … WHERE <fields> = … AND …`` for one model."""

    def __init__(
        self, model: type[models.Model], fields: Sequence[str], where: Sequence[str]
    ) -> None:
        self._table = model._meta.db_table
        self._set = [_column(model, name) for name in fields]
        self._where = [_column(model, name) for name in where]
        self._fields = [field for field, _ in [*self._set, *self._where]]
        self._sql: dict[str, str] = {}  # Per database vendor: only quoting differs.

    def execute(self, using: str, values: Sequence[Any], where: Sequence[Any]) -> int:
        """Set the fields to ``values`` in the rows that match ``where``; how many rows changed.

        ``where`` values cannot be None: ``column = NULL`` matches nothing (use the ORM's
        ``isnull`` for that).
        """
        if len(values) != len(self._set) or len(where) != len(self._where):
            raise ValueError(f"expected {len(self._set)} values and {len(self._where)} conditions")
        if any(value is None for value in where):
            raise ValueError("a WHERE value of None would match no row")
        connection = connections[using]
        params = [
            field.get_db_prep_save(value, connection)
            for field, value in zip(self._fields, [*values, *where], strict=True)
        ]
        # Like QuerySet.update(): an error inside atomic() marks the transaction for rollback.
        with transaction.mark_for_rollback_on_error(using), connection.cursor() as cursor:
            cursor.execute(self._statement(connection), params)
            return int(cursor.rowcount)

    def _statement(self, connection: BaseDatabaseWrapper) -> str:
        sql = self._sql.get(connection.vendor)
        if sql is None:
            quote = connection.ops.quote_name
            assignments = ", ".join(f"{quote(column)} = %s" for _, column in self._set)
            conditions = " AND ".join(f"{quote(column)} = %s" for _, column in self._where)
            sql = self._sql[connection.vendor] = (
                f"UPDATE {quote(self._table)} SET {assignments} WHERE {conditions}"  # noqa: S608
            )
        return sql


def _column(model: type[models.Model], name: str) -> tuple[models.Field[Any, Any], str]:
    field = model._meta.get_field(name)
    if not isinstance(field, models.Field) or field.column is None:
        raise TypeError(f"{model.__name__}.{name} is not a column")
    return field, field.column
