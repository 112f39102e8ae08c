"""A tracking URI checked by its scheme before MLflow sees it: one line for each way it can be wrong.

MLflow reads any string as a URI: a word becomes a file store in the working directory, an unknown scheme
fails in its model registry, a missing database driver is a ``ModuleNotFoundError``, a database path that
is a directory is retried for 100 seconds, a relative ``sqlite:///`` path lands wherever the command ran.
``check_tracking_uri`` decides all of that from the URI and the file system alone (no network), so the
harness refuses in one line before anything is written. Reaching a server is the store's check
(``tracking.MlflowStore.check``), which says here (``not_mlflow``) when what answered is not MLflow.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..config import ConfigError

SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
# MLflow's SQL stores besides SQLite (``mlflow.store.db.db_types``), as SQLAlchemy dialects.
DATABASES = ("postgresql", "mysql", "mssql")
SCHEMES = ("sqlite", "http", "https", "file", *DATABASES, "databricks", "databricks-uc", "uc")
# The module SQLAlchemy imports for a driver -> the package that provides it (pip's name).
DRIVER_PACKAGES = {
    "psycopg2": "psycopg2-binary",
    "psycopg": "psycopg[binary]",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
    "mysql": "mysql-connector-python",
    "mariadb": "mariadb",
    "pyodbc": "pyodbc",
    "pymssql": "pymssql",
}
SERVER_PROBE = "/api/2.0/mlflow/experiments/search"  # what an MLflow server answers with JSON


@dataclass(frozen=True)
class TrackingUri:
    """A checked tracking URI: ``uri`` is what MLflow gets (a relative SQLite path made absolute), ``note``
    the line to print when it differs from what the user wrote."""

    uri: str
    note: str | None = None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, absolute (a relative one against the working directory,
    as SQLite itself would), or None for any other URI."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(os.path.abspath(uri.removeprefix("sqlite:///").split("?", 1)[0]))


def check_tracking_uri(uri: str, source: str = "--tracking-uri", *, write: bool = True) -> TrackingUri:
    """``uri`` if MLflow can open it here as a store, else ``ConfigError`` naming ``source`` and the reason.

    ``write``: the store will be written (a run, not a dry run), so its file must be writable too.
    """
    if not uri.strip() or not uri.isprintable():
        raise ConfigError(f"{source} {uri!r}: not a URI (empty, or with control characters)")
    where = f"{source} {uri}"
    scheme = urlsplit(uri).scheme.lower() if ":" in uri else ""
    dialect = scheme.partition("+")[0]
    if scheme == "sqlite":
        return _sqlite(uri, where, write)
    if scheme in ("", "file") or len(scheme) == 1:  # a bare path, or a Windows drive letter: a file store
        return _file_store(uri, where, write)
    if scheme in ("http", "https"):
        _server(uri, where)
        return TrackingUri(uri)
    if dialect in DATABASES:
        _database(uri, where)
        return TrackingUri(uri)
    if scheme in SCHEMES:  # Databricks: MLflow checks its own credentials
        return TrackingUri(uri)
    raise ConfigError(f"{where}: unknown scheme {scheme!r}; valid: {', '.join(SCHEMES)}")


def _sqlite(uri: str, where: str, write: bool) -> TrackingUri:
    path = sqlite_path(uri)
    rest = uri.removeprefix("sqlite:")
    if path is None or rest in ("///", "///:memory:") or ":memory:" in rest:
        # in-memory (``sqlite://``): every process would get an empty store of its own, and nothing is kept
        raise ConfigError(f"{where}: give the database file, sqlite:///relative/path.db or sqlite:////absolute.db")
    if rest.removeprefix("///").startswith("file:"):
        raise ConfigError(f"{where}: SQLite URI filenames (file:...) are not supported; give the database's path")
    check_file(path, f"{where}: database", write, header=SQLITE_HEADER)
    absolute = f"sqlite:///{path}"
    if uri.removeprefix("sqlite:///").startswith("/"):
        return TrackingUri(uri)
    # MLflow would resolve it against the working directory too, but silently, and each worker process
    # against its own: the absolute path is decided once, here, and said.
    return TrackingUri(absolute, f"tracking store {uri} is relative to the working directory: using {absolute}")


def _file_store(uri: str, where: str, write: bool) -> TrackingUri:
    path = Path(urlsplit(uri).path if uri.lower().startswith("file:") else uri).expanduser()
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
        hint = f"sqlite:///{Path(os.path.abspath(path)) / 'mlflow.db'}"
        raise ConfigError(
            f"{where}: {'no scheme, so ' if not uri.lower().startswith('file:') else ''}MLflow's file store at "
            f"{path}, which MLflow 3 refuses; "
            f"give {hint}, http(s)://HOST:PORT or a database URL (or set MLFLOW_ALLOW_FILE_STORE=true)"
        )
    check_directory(path, f"{where}: file store", write)
    return TrackingUri(uri)


def _server(uri: str, where: str) -> None:
    parts = urlsplit(uri)
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    if not parts.hostname:
        raise ConfigError(f"{where}: no host; give http(s)://HOST:PORT")


def _database(uri: str, where: str) -> None:
    """A database URL SQLAlchemy can parse, whose dialect and driver are installed."""
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        url = make_url(uri)
        dialect = url.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise ConfigError(f"{where}: unknown database driver {urlsplit(uri).scheme!r}") from None
    except (sqlalchemy.exc.ArgumentError, ValueError) as err:
        raise ConfigError(f"{where}: not a database URL ({str(err).splitlines()[0][:120]})") from None
    if not url.database:
        raise ConfigError(f"{where}: no database name; give {url.drivername}://USER@HOST:PORT/DATABASE")
    try:
        dialect.import_dbapi()
    except ImportError as err:
        module = (err.name or "").partition(".")[0] or dialect.driver
        package = DRIVER_PACKAGES.get(module, module)
        raise ConfigError(
            f"{where}: its database driver {module!r} is not installed (pip install '{package}', "
            f"or name an installed driver: {url.get_backend_name()}+DRIVER://){_installed(url.get_backend_name())}"
        ) from None


def _installed(backend: str) -> str:
    """'; installed: postgresql+psycopg' when another driver of ``backend`` is importable here."""
    names = {"postgresql": ("psycopg", "pg8000"), "mysql": ("pymysql", "mysqlconnector"), "mssql": ("pymssql",)}
    modules = {"mysqlconnector": "mysql.connector"}
    found = [d for d in names.get(backend, ()) if _importable(modules.get(d, d))]
    return f"; installed: {', '.join(f'{backend}+{d}://' for d in found)}" if found else ""


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # ``a.b`` whose package ``a`` is missing
        return False


def check_file(path: Path, what: str, write: bool, header: bytes | None = None) -> None:
    """``path`` is a regular file that can be read (and written), or a file that can be created."""
    if path.exists():
        if path.is_dir():
            raise ConfigError(f"{what} {path} is a directory, not a file (name a file inside it)")
        if not path.is_file():
            raise ConfigError(f"{what} {path} is not a regular file")
        if not os.access(path, os.R_OK) or (write and not os.access(path, os.W_OK)):
            raise ConfigError(f"{what} {path} is not {'writable' if write else 'readable'}")
        if header is not None:
            with path.open("rb") as f:
                start = f.read(len(header))
            if start and start != header:  # an empty file is a new database
                raise ConfigError(f"{what} {path} is not an SQLite database")
        return
    check_directory(path.parent, what.rpartition(":")[0] + ": folder", write)


def check_directory(path: Path, what: str, write: bool) -> None:
    """``path`` is a directory (writable if ``write``) or can be made one: its nearest existing ancestor is a
    writable directory. A file in the way is named, as is the ancestor that cannot be written."""
    path = Path(os.path.abspath(path))
    existing = next(p for p in (path, *path.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        kind = "a dangling link" if not existing.exists() else "a file"
        raise ConfigError(f"{what} {path}: {existing} is {kind}, not a directory")
    if write and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: {existing} is not writable")


def not_mlflow(uri: str) -> str | None:
    """Why the server at ``uri`` is not an MLflow tracking server (what it answered), or None when it
    answers as one does (JSON) or cannot be reached (the caller's reason then stands)."""
    import requests

    url = uri.rstrip("/") + SERVER_PROBE
    try:
        got = requests.get(url, params={"max_results": 1}, timeout=10)
    except requests.RequestException:
        return None
    try:
        got.json()
        return None
    except ValueError:
        kind = got.headers.get("content-type", "no content type").split(";")[0]
        return f"not an MLflow tracking server: GET {SERVER_PROBE} answered HTTP {got.status_code} with {kind}"
