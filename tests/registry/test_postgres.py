"""The registry on a real database: MLflow with a PostgreSQL backend store, registering and loading by alias.

The fixture starts Debian's PostgreSQL (``/usr/lib/postgresql/<version>/bin``; installed with ``apt-get install -y
postgresql`` when missing and we are root) as a throw-away cluster on a free loopback port, with its socket and
data in a temporary folder, and stops it afterwards. Where that is impossible (no binaries and no root, no
``psycopg2``, the server does not start) the test is skipped with the reason.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from humo.config import Params
from humo.registry import mlflow_registry as reg
from humo.registry.pyfunc import build_model_folder, input_example, model_signature

from .conftest import open_store

pytestmark = pytest.mark.slow

POSTGRES_ROOT = Path("/usr/lib/postgresql")
APT_TIMEOUT_S = 600
START_TIMEOUT_S = 60
DATABASE = "mlflow"
ROLE = "humo"


def _postgres_bin() -> Path | None:
    for candidate in sorted(POSTGRES_ROOT.glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True):
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    return None


def _install_postgres() -> str | None:
    """``apt-get install -y postgresql`` as root; returns why it could not, or None."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "PostgreSQL is not installed and this user cannot apt-get install it (not root or no apt)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
        capture_output=True,
        text=True,
        env=env,
        timeout=APT_TIMEOUT_S,
        check=False,
    )
    return None if result.returncode == 0 else f"apt-get install postgresql failed: {result.stderr[-500:]}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_uri() -> Iterator[str]:
    """``postgresql+psycopg2://humo@127.0.0.1:PORT/mlflow`` of a throw-away local cluster (trust auth, loopback only)."""
    try:
        import psycopg2  # noqa: F401 - MLflow's SQLAlchemy store needs the driver
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install psycopg2-binary, a dev dependency)")
    bindir = _postgres_bin()
    if bindir is None:
        reason = _install_postgres()
        bindir = _postgres_bin()
        if bindir is None:
            pytest.skip(reason or "PostgreSQL binaries not found under /usr/lib/postgresql after installing")
    # the server refuses to run as root: run it as the postgres user, in a folder that user owns
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="humo-pg-"))
    data = folder / "data"
    if as_user:
        shutil.chown(folder, user="postgres", group="postgres")
    port = _free_port()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False)

    steps = [
        (str(bindir / "initdb"), "-D", str(data), "-U", ROLE, "--auth=trust", "--encoding=UTF8", "--no-sync"),
        (
            str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", str(START_TIMEOUT_S),
            "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start",
        ),
        (str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", ROLE, DATABASE),
    ]
    started = False
    try:
        for step in steps:
            result = run(*step)
            if result.returncode != 0:
                log = (folder / "server.log").read_text()[-1000:] if (folder / "server.log").is_file() else ""
                pytest.skip(f"could not start PostgreSQL ({Path(step[0]).name}): {result.stderr[-500:]} {log}")
            started = started or step[-1] == "start"
        # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3: name the psycopg2 driver
        yield f"postgresql+psycopg2://{ROLE}@127.0.0.1:{port}/{DATABASE}"
    finally:
        if started:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_register_and_load_by_alias_on_postgres(
    postgres_uri: str, registry_params: Params, tiny_parts: dict[str, Path], tmp_path: Path
) -> None:
    cfg = registry_params
    name = "humo-postgres"
    registry = cfg.registry.model_copy(update={"model_name": name})
    folder = tmp_path / "model_dir"
    build_model_folder(folder, tiny_parts["checkpoint"], tiny_parts["vae"], cfg.encoders, cfg.generate, registry, cfg.limits, "run-pg")
    previous = open_store(postgres_uri, tmp_path / "artifacts")
    try:
        client = MlflowClient(tracking_uri=postgres_uri)
        with mlflow.start_run(run_name="register"):
            version, created = reg.register_version(
                client, name, folder, "run-pg", {"humo.metric.sync_confidence": "0.5"}, model_signature(), None,
                pip_requirements=["mlflow"],
            )
        decision = reg.promote(client, version, registry, gate_passed=True, gate_reason="test")
        assert created and decision["promoted"]
        # idempotent on this backend too
        with mlflow.start_run(run_name="register-again"):
            again, created_again = reg.register_version(
                client, name, folder, "run-pg", {}, model_signature(), None, pip_requirements=["mlflow"]
            )
        assert not created_again and again.version == version.version

        # the rows live in PostgreSQL
        import psycopg2

        with psycopg2.connect(postgres_uri.replace("+psycopg2", "")) as connection, connection.cursor() as cursor:
            cursor.execute("select alias, version from registered_model_aliases where name = %s order by alias", (name,))
            assert cursor.fetchall() == [("candidate", int(version.version)), ("champion", int(version.version))]

        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        output = model.predict(input_example(cfg.generate))
        assert base64.b64decode(output["video"][0])[4:8] == b"ftyp"
        assert json.loads(output["sidecar"][0])["model"]["version"] == "run-pg"  # the training run it comes from
    finally:
        mlflow.set_tracking_uri(previous)
