"""Fernet encryption of provider keys: the key from SECRET_KEY or a 0600 file in DATA_DIR."""

from __future__ import annotations

import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from app.core import security
from app.core.config import Settings
from app.core.errors import ConfigurationError
from app.core.security import decrypt_secret, encrypt_secret, secret_hint

PLAIN = "sk-live-0123456789abcdefWXYZ"


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Point security at fresh settings; the cached Fernet is dropped before and after."""

    def apply(**values: object) -> None:
        settings = Settings(**values)  # type: ignore[arg-type]
        monkeypatch.setattr(security, "get_settings", lambda: settings)
        security._fernet.cache_clear()

    yield apply
    security._fernet.cache_clear()


def test_round_trip_and_the_token_hides_the_plain_key(
    configure: Callable[..., None], tmp_path: Path
) -> None:
    configure(data_dir=tmp_path, secret_key=None)
    token = encrypt_secret(PLAIN)
    assert decrypt_secret(token) == PLAIN
    assert PLAIN not in token and "0123456789" not in token
    assert encrypt_secret(PLAIN) != token, "each token has its own IV"


def test_key_file_is_created_once_with_mode_0600(
    configure: Callable[..., None], tmp_path: Path
) -> None:
    data_dir = tmp_path / "not" / "yet" / "there"
    configure(data_dir=data_dir, secret_key=None)
    token = encrypt_secret(PLAIN)
    key_file = data_dir / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes()
    security._fernet.cache_clear()  # a new process: the same file, the same key
    assert decrypt_secret(token) == PLAIN and key_file.read_bytes() == key
    assert [p.name for p in data_dir.iterdir()] == ["secret.key"]


def test_racing_creators_agree_on_one_key(tmp_path: Path) -> None:
    """Creators started together each use the key they read back, and it is the published one:
    a token any of them encrypted decrypts with the surviving file."""
    path = tmp_path / "secret.key"
    start = threading.Barrier(8)
    tokens: list[bytes] = []

    def create_then_encrypt() -> None:
        start.wait(30)
        security._create_key_file(path)
        tokens.append(Fernet(path.read_bytes().strip()).encrypt(PLAIN.encode()))

    threads = [threading.Thread(target=create_then_encrypt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    survivor = Fernet(path.read_bytes().strip())
    assert len(tokens) == 8
    assert all(survivor.decrypt(token).decode() == PLAIN for token in tokens)
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"], "no draft left behind"


def test_secret_key_setting_is_used_and_a_wrong_one_cannot_decrypt(
    configure: Callable[..., None], tmp_path: Path
) -> None:
    configure(data_dir=tmp_path, secret_key=Fernet.generate_key().decode())
    token = encrypt_secret(PLAIN)
    assert decrypt_secret(token) == PLAIN
    assert not (tmp_path / "secret.key").exists()
    configure(data_dir=tmp_path, secret_key=Fernet.generate_key().decode())
    with pytest.raises(ConfigurationError) as info:
        decrypt_secret(token)
    assert PLAIN not in info.value.message


def test_a_malformed_secret_key_is_a_configuration_error(
    configure: Callable[..., None], tmp_path: Path
) -> None:
    configure(data_dir=tmp_path, secret_key="not-a-fernet-key")
    with pytest.raises(ConfigurationError, match="SECRET_KEY"):
        encrypt_secret(PLAIN)


def test_hint_shows_only_the_last_four_characters() -> None:
    assert secret_hint(PLAIN) == "…WXYZ"
    assert secret_hint("abc") == "…"
