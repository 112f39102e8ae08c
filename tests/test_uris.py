"""Every tracking URI, HARNESS_* variable, spec path and full disk ends in one line, before anything is written."""

import http.server
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from fixtures import free_port, write_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.config import ConfigError, read_yaml
from harness.orchestration.environ import VARIABLES, check_environment
from harness.orchestration.store import store_root
from harness.orchestration.tracking import MlflowStore, existing_store
from harness.orchestration.uris import TrackingUri, check_tracking_uri
from harness.private import private_dir
from harness.tracker import StoreUnavailable
from harness.writes import DiskFull, writing

REPO = Path(__file__).resolve().parents[1]


def _one_line(err: BaseException) -> str:
    text = str(err)
    reason = text.rsplit(": ", 1)[-1]  # after the last colon: words, never a lone quote
    assert "\n" not in text and "Traceback" not in text and re.search(r"[A-Za-z]{3}", reason), text
    return text


# -- tracking URIs by scheme ------------------------------------------------------------------------------

BAD_URIS = [  # (uri, words the line must hold)
    ("garbage", ["no scheme", "sqlite:///", "MLFLOW_ALLOW_FILE_STORE"]),
    ("::::", ["no scheme"]),
    ("", ["not a URI"]),
    ("sqlite:///a\x00b.db", ["not a URI"]),
    ("foo://bar", ["unknown scheme 'foo'", "sqlite, http"]),
    ("sqlite://", ["give the database file"]),
    ("sqlite:///:memory:", ["give the database file"]),
    ("sqlite:///file:x.db?mode=ro", ["file:"]),
    ("http://:5000", ["no host"]),
    ("http://host:port", ["Port could not be cast"]),
    ("postgresql+nosuchdriver://u@h/db", ["unknown database driver 'postgresql+nosuchdriver'"]),
    ("postgresql+psycopg://u@h", ["no database name"]),
    ("file:/tmp/somewhere", ["MLflow's file store", "refuses"]),
]


@pytest.mark.parametrize("uri,words", BAD_URIS, ids=[repr(u) for u, _ in BAD_URIS])
def test_bad_uri_is_one_line_naming_it(uri, words):
    with pytest.raises(ConfigError) as err:
        check_tracking_uri(uri, "--tracking-uri")
    line = _one_line(err.value)
    assert line.startswith("--tracking-uri") and all(w in line for w in words), line


@pytest.mark.parametrize(
    "uri,module,package",
    [
        ("mysql://u@h/db", "MySQLdb", "mysqlclient"),
        ("mysql+pymysql://u@h/db", "pymysql", "PyMySQL"),
        ("mssql+pyodbc://u@h/db", "pyodbc", "pyodbc"),
        ("postgresql+psycopg2://u@h/db", "psycopg2", "psycopg2-binary"),
    ],
)
def test_a_missing_database_driver_names_the_package(uri, module, package):
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    with pytest.raises(ConfigError) as err:
        check_tracking_uri(uri)
    assert f"pip install '{package}'" in _one_line(err.value)


def test_store_paths_that_are_not_a_database_file(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "text.db").write_text("not a database")
    (tmp_path / "afile").write_text("x")
    cases = {
        "folder": "is a directory, not a file",
        "text.db": "is not an SQLite database",
        "afile/mlflow.db": "is a file, not a directory",
    }
    for name, words in cases.items():
        with pytest.raises(ConfigError, match=re.escape(words)):
            check_tracking_uri(f"sqlite:///{tmp_path / name}")
    (tmp_path / "empty.db").touch()  # an empty file is a new database
    assert check_tracking_uri(f"sqlite:///{tmp_path / 'empty.db'}").note is None


def test_a_store_that_is_a_directory_fails_at_once_without_retries(tmp_path, capfd):
    """MLflow retried it for 100 s with 36 lines of warnings."""
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="is a directory"):
        MlflowStore(f"sqlite:///{tmp_path}")
    assert time.perf_counter() - t0 < 5
    assert "retried" not in capfd.readouterr().err


def test_a_relative_sqlite_path_is_resolved_once_and_said(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checked = check_tracking_uri("sqlite:///sub/mlflow.db")
    assert checked == TrackingUri(
        f"sqlite:///{tmp_path}/sub/mlflow.db",
        f"tracking store sqlite:///sub/mlflow.db is relative to the working directory: using "
        f"sqlite:///{tmp_path}/sub/mlflow.db",
    )
    assert store_root("sqlite:///sub/mlflow.db") == tmp_path / "sub"
    assert not (tmp_path / "sub").exists()  # checking writes nothing


def test_an_absolute_sqlite_uri_is_kept_verbatim(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert check_tracking_uri(uri) == TrackingUri(uri)
    assert not any(tmp_path.iterdir())


def test_a_file_store_is_checked_when_mlflow_allows_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        check_tracking_uri((tmp_path / "afile" / "store").as_uri())
    assert check_tracking_uri((tmp_path / "store").as_uri()).uri == (tmp_path / "store").as_uri()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    uri=st.one_of(
        st.text(max_size=40),
        st.builds(
            lambda s, rest: f"{s}:{rest}",
            st.sampled_from(["sqlite", "http", "https", "file", "postgresql", "mysql+x", "mssql", "zz", "SQLITE"]),
            st.text(max_size=30),
        ),
    )
)
def test_any_string_is_accepted_or_refused_in_one_line(uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        checked = check_tracking_uri(uri)
    except ConfigError as err:
        assert "\n" not in str(err)
    else:
        assert checked.uri.startswith(("sqlite:////", "http", "postgresql", "mysql", "mssql", "databricks", "uc"))
    assert not any(tmp_path.iterdir())


class _NotMlflow(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<html>nothing here</html>")

    def log_message(self, *args):
        pass


def test_a_server_that_is_not_mlflow_is_named_as_such():
    """The reason was a lone ``'``."""
    server = http.server.HTTPServer(("127.0.0.1", free_port()), _NotMlflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(StoreUnavailable) as err:
            MlflowStore(f"http://127.0.0.1:{server.server_port}").check()
    finally:
        server.shutdown()
    line = _one_line(err.value)
    assert "not an MLflow tracking server" in line and "HTTP 404 with text/html" in line, line


def test_a_refused_database_is_one_line_in_seconds(capfd):
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("psycopg is not installed")
    t0 = time.perf_counter()
    with pytest.raises(StoreUnavailable) as err:
        MlflowStore(f"postgresql+psycopg://u@127.0.0.1:{free_port()}/db")
    assert time.perf_counter() - t0 < 10 and "Connection refused" in _one_line(err.value)
    assert "retried" not in capfd.readouterr().err


@pytest.mark.parametrize(
    "uri,words",
    [("foo://x", "unknown scheme"), ("mysql+pymysql://u@h/db", "pip install"), ("sqlite://", "database file")],
)
def test_the_cli_refuses_a_bad_uri_before_writing(tmp_path, capsys, monkeypatch, uri, words):
    if "pymysql" in uri and importlib.util.find_spec("pymysql") is not None:
        pytest.skip("pymysql is installed here")
    spec = write_spec(tmp_path)
    monkeypatch.chdir(tmp_path)
    for argv in (["run", str(spec), "--dry-run"], ["run", str(spec), "--profile", "smoke"]):
        assert main([*argv, "--tracking-uri", uri]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


def test_the_environment_variable_is_named_when_it_holds_the_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "foo://x")
    with pytest.raises(ConfigError, match=r"^MLFLOW_TRACKING_URI foo://x: unknown scheme"):
        MlflowStore()


# -- the dry run reads a store it cannot write -----------------------------------------------------------


def _store_with_a_run(folder: Path) -> str:
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    store = MlflowStore(uri)
    store.start_run(store.experiment_id("e"), "r", {}).finish()
    (folder / "mlflow.db.lock").unlink()
    return uri


def test_the_dry_run_opens_a_store_read_only(tmp_path):
    uri = _store_with_a_run(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    store = existing_store(uri)
    assert store.client.get_experiment_by_name("e") is not None
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no lock file, no migration


def test_the_dry_run_reads_a_store_in_a_folder_it_cannot_write():
    """Run as another user when this is root (root writes everywhere); the folder is 0555."""
    folder = Path(tempfile.mkdtemp(prefix="readonly-store-", dir="/tmp"))
    try:
        uri = _store_with_a_run(folder)
        folder.chmod(0o555)
        (folder / "mlflow.db").chmod(0o444)
        code = f"from harness.orchestration.tracking import existing_store; print(existing_store({uri!r}).uri)"
        user = {"user": 65534} if os.getuid() == 0 else {}
        try:
            got = subprocess.run(
                [sys.executable, "-c", code],
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO), "HOME": "/tmp"},
                capture_output=True,
                text=True,
                timeout=120,
                **user,
            )
        except PermissionError:
            pytest.skip("cannot run as another user here")
        if "Permission denied" in got.stderr and "mlflow.db" not in got.stderr:
            pytest.skip(f"the other user cannot read the code: {got.stderr.strip().splitlines()[-1]}")
        assert got.returncode == 0 and got.stdout.strip() == uri, got.stderr
        if os.getuid() != 0:  # a run (which writes) is refused in one line; root may write anywhere
            with pytest.raises(ConfigError, match="is not writable"):
                check_tracking_uri(uri)
    finally:
        folder.chmod(0o755)
        subprocess.run(["rm", "-rf", str(folder)], check=False)


# -- HARNESS_* variables ----------------------------------------------------------------------------------


def test_every_harness_variable_in_the_tree_is_declared():
    names = set()
    for folder in ("harness", "analysis", "tests", "docs", "experiments", ".ci"):
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".md", ".yaml", "") and path.name != "test_uris.py":
                names |= set(re.findall(r"\bHARNESS_[A-Z][A-Z_]*[A-Z]\b", path.read_text(errors="ignore")))
    for path in (REPO / "Makefile", REPO / "README.md"):
        names |= set(re.findall(r"\bHARNESS_[A-Z][A-Z_]*[A-Z]\b", path.read_text()))
    names -= {"HARNESS_KEYWORDS"}  # a Python constant (config/space.py), not a variable
    assert names <= set(VARIABLES), names - set(VARIABLES)


@pytest.mark.parametrize(
    "name,value,words",
    [
        ("HARNESS_CACHEDIR", "/tmp/x", "unknown; did you mean HARNESS_CACHE_DIR?"),
        ("HARNESS_AUTOTUNE", "of", "the only value is 'off'"),
        ("HARNESS_DEVICE", "cuda7", "expected cpu, cuda, cuda:N or mps"),
        ("HARNESS_CACHE_DIR", "{file}", "is a file, not a directory"),
        ("HARNESS_STORE_ROOT", "{file}/below", "is a file, not a directory"),
    ],
)
def test_a_bad_harness_variable_exits_2_naming_it(tmp_path, capsys, monkeypatch, name, value, words):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv(name, value.format(file=tmp_path / "file"))
    assert main(["validate", str(write_spec(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: environment variable {name}") and words in err and err.count("\n") == 1, err


@given(st.from_regex(r"HARNESS_[A-Z_]{1,20}", fullmatch=True))
def test_any_undeclared_harness_name_is_refused(name):
    if name in VARIABLES:
        return
    with pytest.raises(ConfigError, match=f"environment variable {name}: unknown"):
        check_environment({name: "1"})


def test_the_declared_variables_with_good_values_pass(tmp_path):
    check_environment(
        {"HARNESS_CACHE_DIR": str(tmp_path / "new" / "cache"), "HARNESS_AUTOTUNE": "off", "HARNESS_DEVICE": "cuda:1"}
    )


# -- spec paths that are not files, cache roots with a file in the way ----------------------------------


def test_a_fifo_device_or_folder_spec_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    errors = {}

    def read(path):
        try:
            read_yaml(path)
        except ConfigError as err:
            errors[path] = str(err)

    for path in (str(fifo), "/dev/zero", str(tmp_path)):
        reader = threading.Thread(target=read, args=(path,), daemon=True)
        reader.start()
        reader.join(10)
        assert not reader.is_alive(), f"reading {path} blocked"
    assert errors == {
        str(fifo): f"{fifo}: is a FIFO (named pipe), not a file; write the YAML to a file",
        "/dev/zero": "/dev/zero: is a character device, not a file; write the YAML to a file",
        str(tmp_path): f"{tmp_path}: is a directory, not a file; write the YAML to a file",
    }


def test_a_private_dir_with_a_file_in_the_way_is_one_line(tmp_path):
    (tmp_path / "cache").write_text("x")
    for path in (tmp_path / "cache", tmp_path / "cache" / "classifiers"):
        with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'cache'} is a file, not a directory")):
            private_dir(path)


# -- a full disk ------------------------------------------------------------------------------------------

needs_dev_full = pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full (Linux) to fill")


@needs_dev_full
@pytest.mark.parametrize("how", ["torch.save to a path", "torch.save to a file object", "write"])
def test_a_full_disk_names_the_file(how):
    """/dev/full fails every write with ENOSPC, as a full disk does."""
    state = {"w": torch.zeros(100_000)}
    with pytest.raises(DiskFull) as err:
        with writing("/dev/full"):
            if how == "torch.save to a path":
                torch.save(state, "/dev/full")
            else:
                with open("/dev/full", "wb") as f:
                    torch.save(state, f) if how != "write" else f.write(b"x" * 100_000)
                    f.flush()
    line = _one_line(err.value)
    assert line.startswith("disk full: no space left on device while writing /dev/full"), line
    assert "inline_container" not in line


def test_other_errors_pass_through_writing():
    with pytest.raises(RuntimeError, match="something else"), writing("x"):
        raise RuntimeError("something else")


@needs_dev_full
def test_a_checkpoint_on_a_full_disk_names_the_checkpoint(tmp_path, monkeypatch):
    """The message was ``enforce fail at inline_container.cc``."""
    from harness.training import checkpoint

    part = tmp_path / ".checkpoint.pt.tmp"
    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", lambda **_: (os.open("/dev/full", os.O_WRONLY), str(part)))
    with pytest.raises(DiskFull, match=re.escape(f"while writing {tmp_path / 'checkpoint.pt'}")):
        checkpoint.save_atomic({"w": torch.zeros(100_000)}, tmp_path / "checkpoint.pt")
    assert not (tmp_path / "checkpoint.pt").exists()


def test_a_full_sqlite_store_names_the_database(tmp_path):
    """SQLite says ``database or disk is full``; the job's line says which file."""
    import sqlalchemy.exc

    from harness.orchestration.tracking import GuardedClient

    class Full:
        def log_batch(self, *args, **kwargs):
            raise sqlalchemy.exc.OperationalError("INSERT", {}, Exception("database or disk is full"))

    db = tmp_path / "mlflow.db"
    with pytest.raises(DiskFull, match=re.escape(f"while writing {db}")):
        GuardedClient(Full(), f"sqlite:///{db}").log_batch("run")
