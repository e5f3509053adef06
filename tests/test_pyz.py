"""The one-file zipapp: scripts/build_pyz.sh builds apss.pyz from the repository (shiv; pip takes
the dependencies from its cache or PyPI), and a plain interpreter runs it from an empty folder:
`python3 -I -S apss.pyz serve --port N`, where -S keeps the machine's site-packages (and the
checkout's editable install) out of sight, so everything that serves comes from the file. The
once-only admin token it prints (--print-secrets: its output is a file here) sells and pays an
order over HTTP; SIGTERM stops it in order."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for
from tests.installed import sell_and_pay_one, wait_until_serving

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_the_pyz_runs_on_a_plain_python_from_an_empty_folder(tmp_path):
    pyz = tmp_path / "apss.pyz"
    built = subprocess.run(["bash", str(ROOT / "scripts" / "build_pyz.sh"), str(pyz)], capture_output=True, text=True,
                           timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert built.returncode == 0 and pyz.is_file(), (built.stdout, built.stderr)
    # The interpreter as -I -S leaves it has none of APSS's dependencies of its own.
    bare = subprocess.run([sys.executable, "-I", "-S", "-c", "import litestar"], capture_output=True, text=True)
    assert bare.returncode != 0, "the plain interpreter must not see the installed packages"

    empty = tmp_path / "empty"
    empty.mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "SHIV_ROOT": str(tmp_path / "shiv")}
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        server = subprocess.Popen([sys.executable, "-I", "-S", str(pyz), "serve", "--port", str(port), "--print-secrets"],
                                  cwd=empty, env=env, stdout=sink, stderr=sink)
    try:
        wait_until_serving(server, base, log)
        token_line = wait_for(lambda: [line for line in log.read_text().splitlines()
                                       if line.startswith("Generated admin token")])[0]
        order = sell_and_pay_one(base, admin_token=token_line.rsplit(" ", 1)[1])
        assert order["status"] == "fulfilled" and order["amount"] == 100
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, log.read_text()
    assert (empty / "data" / "apss.sqlite").is_file(), "the data lives in ./data of the folder it was started in"
    assert any((tmp_path / "shiv").iterdir()), "it ran from its own unpacked dependencies"
