from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import bert_model_dir, bpe_model_dir, llama_model_dir, wordpiece_model_dir  # noqa: E402


@pytest.fixture(scope="session")
def bpe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bpe_model_dir(tmp_path_factory.mktemp("models") / "bpe")


@pytest.fixture(scope="session")
def wordpiece_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return wordpiece_model_dir(tmp_path_factory.mktemp("models") / "wordpiece")


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return llama_model_dir(tmp_path_factory.mktemp("models") / "llama")


@pytest.fixture(scope="session")
def llama16_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with head size 16, which onnxruntime's CPU attention accepts."""
    return llama_model_dir(tmp_path_factory.mktemp("models") / "llama16", head_dim=16)


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bert_model_dir(tmp_path_factory.mktemp("models") / "bert")


@pytest.fixture(autouse=True)
def ftc_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty store."""
    home = tmp_path / "ftc-home"
    monkeypatch.setenv("FTC_HOME", str(home))
    return home
