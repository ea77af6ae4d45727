"""The declarative base, shared column types and the constraint naming convention."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer, MetaData, String, inspect
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, mapped_column
from sqlalchemy.types import TypeDecorator

#: Every constraint and index gets a predictable name, so that Alembic batch migrations
#: on SQLite (which recreate tables) can find and drop them by name.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: ComfyUI seeds are unsigned 64-bit integers.
MAX_SEED = 2**64 - 1


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC and always read back timezone-aware (UTC).

    SQLite keeps no time zone, so every value is normalised to UTC on the way in;
    a naive value is taken to be UTC already.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Seed(TypeDecorator[int]):
    """An unsigned 64-bit seed (0 .. 2**64-1) kept in a signed BIGINT column.

    Values of 2**63 and above are stored as their two's complement, so every
    ComfyUI seed round-trips exactly on SQLite and PostgreSQL alike.
    """

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: int | None, dialect: Dialect) -> int | None:
        if value is None:
            return None
        value = int(value)
        if not 0 <= value <= MAX_SEED:
            raise ValueError(f"seed must be between 0 and {MAX_SEED}, got {value}")
        return value - 2**64 if value >= 2**63 else value

    def process_result_value(self, value: int | None, dialect: Dialect) -> int | None:
        if value is None:
            return None
        return value + 2**64 if value < 0 else value


# Shared column types. Nullable variants are spelt Optional[...] at the use site.
intpk = Annotated[int, mapped_column(Integer, primary_key=True)]
#: A Discord snowflake (user, guild, channel or message id): fits in a signed 64-bit int.
snowflake = Annotated[int, mapped_column(BigInteger)]
sha256_hex = Annotated[str, mapped_column(String(64))]
#: A path relative to the data folder; never a user-supplied name.
rel_path = Annotated[str, mapped_column(String(512))]
short_str = Annotated[str, mapped_column(String(64))]
name_str = Annotated[str, mapped_column(String(200))]
created_ts = Annotated[datetime, mapped_column(UTCDateTime(), default=utcnow)]
updated_ts = Annotated[datetime, mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)]
timestamp = Annotated[datetime, mapped_column(UTCDateTime())]
seed_int = Annotated[int, mapped_column(Seed())]
json_dict = Annotated[dict[str, Any], mapped_column(JSON)]
json_list = Annotated[list[Any], mapped_column(JSON)]


class Base(DeclarativeBase):
    """Base of every mapped class; its metadata is what Alembic compares against."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)

    #: Extra attributes shown by ``repr`` after the primary key.
    __repr_attrs__: tuple[str, ...] = ()

    def __repr__(self) -> str:
        # Only already-loaded values are shown, so repr never triggers a query.
        state = inspect(self)
        loaded = state.dict
        names = [c.key for c in self.__mapper__.primary_key if c.key is not None]
        names += [n for n in self.__repr_attrs__ if n not in names]
        parts = [f"{n}={loaded[n]!r}" for n in names if n in loaded]
        return f"<{type(self).__name__} {' '.join(parts)}>"
