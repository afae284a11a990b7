"""The quickstart notebook runs top to bottom exactly as the README says (`uv run jupyter execute
notebooks/quickstart.ipynb`: a real kernel, in the notebook's own folder) against the lake a real
`tidegate demo` leaves, from the project root, from `notebooks/`, and from a project that only
has a `.tidegate` folder (TIDEGATE_HOME unset), and draws its charts inline. Without a lake it
stops with what to run. And how `settings.home()` / `settings.find_lake()` resolve, directly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from tidegate import settings
from tidegate.errors import TidegateError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def _user_env(**changes: str | None) -> dict[str, str]:
    """This process's environment (the session's isolated TIDEGATE_HOME included), as a user's
    shell would pass it: no TIDEGATE_LAKE a developer happened to export, nothing notebook-only."""
    env = {k: v for k, v in os.environ.items() if k != "TIDEGATE_LAKE"}
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _jupyter_execute(
    notebook: Path | str, out: Path, *, cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """`uv run jupyter execute <notebook> --output <out>` (the README's command; --output keeps the
    executed copy outside the repository). --no-sync: a test never changes the environment
    (CI synced it before running the suite). Without uv on PATH: the same venv's jupyter, with
    its bin folder first on PATH, which is what `uv run` does."""
    uv = shutil.which("uv")
    if uv:
        command = [uv, "run", "--no-sync", "--project", str(ROOT), "jupyter"]
    else:
        command = [sys.executable, "-m", "jupyter"]
        env = {**env, "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")}
    command += ["execute", str(notebook), "--output", str(out)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240, check=False)


def _check_executed(out: Path, lake: Path) -> None:
    nb = nbformat.read(out, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [f"{o.get('ename')}: {o.get('evalue')}" for o in outputs if o.get("output_type") == "error"]
    assert not errors
    texts = "".join(o.get("text", "") for o in outputs)
    assert f"reading the lake at {lake}\n" in texts  # the demo's lake, found without being told
    assert "consistent" in texts
    images = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # both charts, inline in the executed notebook
    assert all(len(image) > 10_000 for image in images)  # base64 PNGs with something drawn


@pytest.fixture(scope="module")
def demo_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder after `tidegate demo` ran in it: `<project>/.tidegate/demo/lake` (the real
    demo on its private emulator, with TIDEGATE_HOME pointing there as a user may export it)."""
    from tidegate.cli import main

    project = tmp_path_factory.mktemp("project")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIDEGATE_HOME", str(project / ".tidegate"))
        mp.delenv("TIDEGATE_LAKE", raising=False)
        mp.setattr(sys, "argv", ["tidegate", "demo", "--count", "1200"])
        code: object = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code
        assert code in (0, None), f"tidegate demo exited {code}"
    assert (project / ".tidegate" / "demo" / "lake" / "raw" / "shop.order.placed" / "_delta_log").is_dir()
    return project


@pytest.mark.emulator
@pytest.mark.parametrize("where", ["project root", "notebooks/"])
def test_quickstart_runs_as_the_readme_says_against_the_demo_lake(
    demo_project: Path, tmp_path: Path, where: str
) -> None:
    """`uv run jupyter execute notebooks/quickstart.ipynb` after `tidegate demo`, with TIDEGATE_HOME
    set as a user may have it, from the project root and from notebooks/."""
    home = demo_project / ".tidegate"
    cwd = ROOT if where == "project root" else ROOT / "notebooks"
    out = tmp_path / "executed.ipynb"
    r = _jupyter_execute(NOTEBOOK.relative_to(cwd), out, cwd=cwd, env=_user_env(TIDEGATE_HOME=str(home)))
    assert r.returncode == 0, r.stderr[-4000:]
    _check_executed(out, home / "demo" / "lake")


@pytest.mark.emulator
def test_quickstart_finds_the_projects_lake_without_tidegate_home(demo_project: Path, tmp_path: Path) -> None:
    """The issue's case: TIDEGATE_HOME unset, the demo ran in the project folder, and Jupyter runs
    the notebook in `<project>/notebooks`: the lake is found in `<project>/.tidegate`, the way
    the CLI finds it from any subdirectory."""
    notebooks = demo_project / "notebooks"
    notebooks.mkdir(exist_ok=True)
    shutil.copyfile(NOTEBOOK, notebooks / "quickstart.ipynb")  # the repo's copy stays untouched
    out = tmp_path / "executed.ipynb"
    r = _jupyter_execute(
        "notebooks/quickstart.ipynb", out, cwd=demo_project, env=_user_env(TIDEGATE_HOME=None)
    )
    assert r.returncode == 0, r.stderr[-4000:]
    _check_executed(out, demo_project / ".tidegate" / "demo" / "lake")


def test_quickstart_without_a_lake_says_to_run_the_demo(tmp_path: Path) -> None:
    home = tmp_path / "empty-home"
    home.mkdir()
    out = tmp_path / "executed.ipynb"
    r = _jupyter_execute(NOTEBOOK.relative_to(ROOT), out, cwd=ROOT, env=_user_env(TIDEGATE_HOME=str(home)))
    assert r.returncode != 0
    text = " ".join(r.stderr.split())
    assert "no lake yet" in text
    assert "run `uv run tidegate demo` first" in text
    assert "TIDEGATE_LAKE" in text
    assert "tidegate ingest` first" not in text  # the old, wrong hint


# -- resolution, directly ------------------------------------------------------------------------


def _table(path: Path) -> None:
    write_deltalake(str(path), pa.table({"n": [1]}))


def test_home_is_the_nearest_tidegate_folder_at_or_above_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if any((p / settings.HOME_DIR).is_dir() for p in tmp_path.parents):
        pytest.skip("a .tidegate folder above the temp directory would be found first")
    monkeypatch.delenv("TIDEGATE_HOME")
    monkeypatch.delenv("TIDEGATE_LAKE", raising=False)
    project = tmp_path / "project"
    deep = project / "notebooks" / "deeper"
    deep.mkdir(parents=True)

    monkeypatch.chdir(deep)  # no .tidegate anywhere: ./.tidegate, as before
    assert settings.home() == deep / ".tidegate"

    (project / ".tidegate").mkdir()
    assert settings.home() == project / ".tidegate"
    assert settings.lake_path() == str(project / ".tidegate" / "lake")
    monkeypatch.chdir(project)
    assert settings.home() == project / ".tidegate"

    (deep / ".tidegate").mkdir()  # the nearest one wins, like git's .git
    monkeypatch.chdir(deep)
    assert settings.home() == deep / ".tidegate"

    (deep / ".tidegate").rmdir()
    (deep / ".tidegate").write_text("")  # a file is not a home
    assert settings.home() == project / ".tidegate"

    monkeypatch.setenv("TIDEGATE_HOME", "elsewhere")  # set: taken as it is (relative to the cwd)
    assert settings.home() == deep / "elsewhere"


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to make a folder another user owns")
def test_a_tidegate_folder_another_user_owns_is_never_adopted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if any((p / settings.HOME_DIR).is_dir() for p in tmp_path.parents):
        pytest.skip("a .tidegate folder above the temp directory would be found first")
    monkeypatch.delenv("TIDEGATE_HOME")
    planted = tmp_path / ".tidegate"
    planted.mkdir()
    os.chown(planted, 4242, 4242)  # e.g. /tmp/.tidegate left by someone else
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert settings.home() == work / ".tidegate"


def test_find_lake_prefers_tidegate_lake_then_the_ingest_lake_then_the_demos(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("TIDEGATE_HOME", str(home))
    monkeypatch.delenv("TIDEGATE_LAKE", raising=False)
    monkeypatch.chdir(tmp_path)

    with pytest.raises(TidegateError) as exc:
        settings.find_lake()
    assert "run `uv run tidegate demo` first" in (exc.value.hint or "")
    assert "TIDEGATE_LAKE" in (exc.value.hint or "")

    (home / "lake").mkdir(parents=True)  # a folder without tables is not a lake yet
    _table(home / "demo" / "lake" / "raw" / "shop.order.placed")
    assert settings.find_lake() == str(home / "demo" / "lake")

    _table(home / "lake" / "_ledger")  # once ingest wrote a table, the CLI's lake wins
    assert settings.find_lake() == str(home / "lake")

    monkeypatch.setenv("TIDEGATE_LAKE", "home/demo/lake")  # relative: to the cwd, made absolute
    assert settings.find_lake() == str(home / "demo" / "lake")
    monkeypatch.setenv("TIDEGATE_LAKE", "gs://bucket/lake")
    assert settings.find_lake() == "gs://bucket/lake"
    assert settings.find_lake(str(home / "lake")) == str(home / "lake")

    monkeypatch.setenv("TIDEGATE_LAKE", "typo/lake")
    with pytest.raises(TidegateError) as exc:
        settings.find_lake()
    assert "TIDEGATE_LAKE=typo/lake" in exc.value.message
    assert str(tmp_path) in exc.value.message  # says what it was relative to
