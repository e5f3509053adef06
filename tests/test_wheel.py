"""A wheel built from the repository installs into a fresh virtual environment and `apss serve`
runs from any folder: its migrations travel inside the package. The venv sees the machine's
already-installed dependencies (--system-site-packages), so the test needs no network; the apss
it runs is the wheel's (checked), not the checkout's."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import ADMIN_TOKEN, free_port
from tests.installed import sell_and_pay_one, wait_until_serving

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_migrates_and_sells_from_any_folder(tmp_path):
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                            str(wheels), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    [wheel] = wheels.glob("apss-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    python = env_dir / "bin" / "python"
    installed = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import apss, pathlib; print(pathlib.Path(apss.__file__).resolve())"],
                           cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert str(env_dir) in where.stdout, ("the venv must run the wheel's apss", where.stdout, where.stderr)

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APSS_")}
    env.update(APSS_SERVER_PORT=str(port), APSS_ADMIN_TOKEN=ADMIN_TOKEN, APSS_SEED_DEMO="false",
               APSS_SERVER_PUBLIC_URL=f"http://127.0.0.1:{port}", PYTHONPATH="")
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        server = subprocess.Popen([str(env_dir / "bin" / "apss"), "serve"], cwd=elsewhere, env=env, stdout=sink, stderr=sink)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(server, base, log)
        assert sell_and_pay_one(base, admin_token=ADMIN_TOKEN)["status"] == "fulfilled"
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert (elsewhere / "data" / "apss.sqlite").exists(), "the data lives beside where it was started"
