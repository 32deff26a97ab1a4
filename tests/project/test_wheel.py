"""The package as a user gets it: a wheel built from the repository, installed into a fresh venv
outside it.

``import raysource`` works and no generic top-level name (``journal``, ``runtime``, ...) is
installed; ``raysource cassandra start|status|stop`` works from the wheel (its Maven pom is
package data); the README's first Python example runs. The fresh venv takes raysource's
dependencies from the suite's venv (a ``.pth`` path entry, which does not load the suite's
editable install), so the test needs no download.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from raysource.devnode.local_node import raysource_home
from raysource.devnode.net import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("wheel")
    # build from a copy: an in-tree build would leave build/ and *.egg-info in the repository
    source = tmp / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            "build",
            "results",
            "*.egg-info",
            "__pycache__",
            "target",
            "node_modules",
        ),
    )
    dist = tmp / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("raysource-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # dependencies only: the suite's site-packages as a plain path entry (its .pth files,
    # among them the editable install of this repository, are not processed from there)
    deps = sysconfig.get_paths()["purelib"]
    (purelib / "suite_deps.pth").write_text(deps + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(purelib),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    # the console script, as pip would write it into the venv
    script = venv / "bin" / "raysource"
    script.write_text(
        f"#!{py}\nimport sys\nfrom raysource.cli.main import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    work = tmp / "elsewhere"  # never the repository: nothing may be found through the cwd
    work.mkdir()
    return {"py": py, "script": script, "work": work, "tmp": tmp, "wheel": wheel}


def _run(venv: dict, *args: str, env: dict | None = None, timeout: float = 120):
    return subprocess.run(
        list(args),
        cwd=venv["work"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_the_wheel_installs_one_import_root(wheel_venv: dict) -> None:
    import zipfile

    names = zipfile.ZipFile(wheel_venv["wheel"]).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"raysource"}, tops
    assert "raysource/devnode/cassandra-pom.xml" in names
    assert "raysource/journal/cassandra/schema.cql" in names
    out = _run(
        wheel_venv,
        str(wheel_venv["py"]),
        "-c",
        "import raysource, raysource.journal.cassandra.journal, raysource.sharding.system;"
        " print(raysource.__file__)",
    )
    assert out.returncode == 0, out.stderr
    assert str(ROOT) not in out.stdout and "site-packages" in out.stdout
    for generic in ("journal", "runtime", "sharding", "snapshots"):
        gone = _run(wheel_venv, str(wheel_venv["py"]), "-c", f"import {generic}")
        assert gone.returncode != 0 and "ModuleNotFoundError" in gone.stderr, generic


def test_every_module_of_every_package_is_in_the_wheel(wheel_venv: dict) -> None:
    """pyproject's package-dir maps each folder into the import root; a folder missing from it
    (or from ``packages``) imports fine editable and is silently absent from the wheel."""
    import zipfile

    from rooms import package_dir

    names = set(zipfile.ZipFile(wheel_venv["wheel"]).namelist())
    expected = set()
    for package, folder in package_dir().items():
        for path in (ROOT / folder).glob("*.py"):
            expected.add("/".join([*package.split("."), path.name]))
    # every Python file of the repository's package folders, subfolders included
    tops = {folder.split("/")[0] for folder in package_dir().values()}
    on_disk = {
        p for top in tops for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts
    }
    assert len(expected) == len(on_disk), sorted(map(str, on_disk))
    assert expected <= names, sorted(expected - names)


def test_the_readme_first_example_runs_from_the_wheel(wheel_venv: dict) -> None:
    readme = (ROOT / "README.md").read_text()
    first = re.search(r"^```python\n(.*?)^```", readme, re.S | re.M).group(1)
    example = wheel_venv["work"] / "first_example.py"
    example.write_text(first + "\nprint('first example ran')\n")
    out = _run(wheel_venv, str(wheel_venv["py"]), str(example))
    assert out.returncode == 0, out.stderr
    assert "first example ran" in out.stdout


@pytest.mark.cassandra
def test_cassandra_start_status_stop_from_the_wheel(wheel_venv: dict) -> None:
    home = wheel_venv["tmp"] / "home"
    (home / "cassandra").mkdir(parents=True)
    version_dirs = [p for p in (raysource_home() / "cassandra").glob("[0-9]*") if p.is_dir()]
    for jars in version_dirs:  # reuse the resolved jars (resolving again is offline but slow)
        (home / "cassandra" / jars.name).symlink_to(jars)
    env = {"RAYSOURCE_HOME": str(home)}
    port = free_port()
    cli = str(wheel_venv["script"])
    try:
        started = _run(
            wheel_venv, cli, "cassandra", "start", "--port", str(port), env=env, timeout=300
        )
        assert started.returncode == 0, started.stderr
        assert f"127.0.0.1:{port}" in started.stdout
        status = _run(wheel_venv, cli, "cassandra", "status", env=env)
        assert status.returncode == 0 and f"127.0.0.1:{port}" in status.stdout, status
    finally:
        stopped = _run(wheel_venv, cli, "cassandra", "stop", env=env, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    after = _run(wheel_venv, cli, "cassandra", "status", env=env)
    assert after.returncode != 0
