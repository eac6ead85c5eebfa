"""A fresh database on the machine's PostgreSQL server (127.0.0.1:5432, trust auth), dropped afterwards."""

import uuid
from contextlib import contextmanager


@contextmanager
def postgres_database():
    import psycopg2

    name = f"ptplus_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    admin.autocommit = True
    try:
        admin.cursor().execute(f"CREATE DATABASE {name}")
        yield name
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def loopback_url(database: str) -> str:
    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}"
