"""The package as a user meets it: `pip install` without extras into an empty venv, run from outside the repository.

The install is what catches an import the package does not declare, so it uses a plain venv (no system
site-packages, no `--no-deps`) and a copy of the source (the build writes into the tree it builds from).
It takes about 25 s, once per module; the tests share the group so that xdist runs them on one worker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from telephony_bridge import __version__

REPO = Path(__file__).parent.parent
RECORDING = REPO / "tests" / "recordings" / "conversation.jsonl"

pytestmark = pytest.mark.xdist_group("installed-package")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The `bin` folder of a fresh venv holding the package, installed (not editable) without extras."""
    root = tmp_path_factory.mktemp("installed")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "telephony_bridge", source / "telephony_bridge", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    bin_dir = root / "venv" / ("Scripts" if os.name == "nt" else "bin")
    install = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(source)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    yield bin_dir
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory outside the repository, so nothing resolves against the checkout."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def clean_env() -> dict[str, str]:
    """This environment without what would point Python at the checkout or configure the bridge."""
    dropped = ("PYTHONPATH", "VIRTUAL_ENV", "BRIDGE_CONFIG", "OPENAI_API_KEY", "TWILIO_AUTH_TOKEN")
    return {k: v for k, v in os.environ.items() if k not in dropped}


def run(installed: Path, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(installed / "telephony-bridge"), *args], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def python(installed: Path, cwd: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(installed / "python"), "-c", code], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=60)


def test_the_installed_package_is_the_one_under_test(installed: Path, elsewhere: Path) -> None:
    where = python(installed, elsewhere, "import telephony_bridge; print(telephony_bridge.__file__)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed.parent), where.stdout


def test_version_is_the_one_in_the_package(installed: Path, elsewhere: Path) -> None:
    result = run(installed, elsewhere, "--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"telephony-bridge {__version__}"), result.stderr


def test_the_version_and_license_are_in_the_installed_metadata(installed: Path, elsewhere: Path) -> None:
    result = python(installed, elsewhere, "from importlib.metadata import metadata as m; "
                                          "d = m('telephony-bridge'); print(d['Version'], d['License-Expression'])")
    assert result.stdout.split() == [__version__, "MIT"], result.stderr


def test_init_config_writes_the_example_which_serve_accepts(installed: Path, elsewhere: Path) -> None:
    written = run(installed, elsewhere, "init-config", "bridge.toml")
    assert written.returncode == 0, written.stderr
    example = (REPO / "config" / "bridge.toml").read_text(encoding="utf-8")
    assert (elsewhere / "bridge.toml").read_text(encoding="utf-8") == example
    # The configuration is read (and would be refused, naming the key) before the missing auth token stops start-up.
    started = run(installed, elsewhere, "serve", "--port", "0", "--config", "bridge.toml")
    assert started.returncode == 2
    assert "TWILIO_AUTH_TOKEN is not set" in started.stderr and "configuration error" not in started.stderr


def test_the_demo_runs_a_call_and_writes_its_files(installed: Path, elsewhere: Path) -> None:
    result = run(installed, elsewhere, "demo", "--out", "out")
    assert result.returncode == 0, result.stderr
    assert "caller  hangs up" in result.stdout
    with wave.open(str(elsewhere / "out" / "call.wav")) as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (2, 8000) and wav.getnframes() > 8000
    assert (elsewhere / "out" / "timeline.svg").read_text().startswith("<svg")
    assert list((elsewhere / "out" / "recording").glob("*.jsonl"))


def test_replay_of_a_recording_behaves_as_recorded(installed: Path, elsewhere: Path) -> None:
    recording = shutil.copy(RECORDING, elsewhere / RECORDING.name)
    result = run(installed, elsewhere, "replay", str(recording))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the bridge behaves as recorded" in result.stdout


def test_docstrings_and_docs_cite_only_documents_in_the_repository() -> None:
    texts = [*REPO.glob("telephony_bridge/**/*.py"), *REPO.glob("docs/*.md"), REPO / "README.md"]
    citing = [str(path.relative_to(REPO)) for path in texts if "PROTOCOLS.md" in path.read_text(encoding="utf-8")]
    assert citing == []
    assert (REPO / "docs" / "protocols.md").is_file()
