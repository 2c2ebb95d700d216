"""Secrets at rest: provider API keys are Fernet-encrypted with a key from settings or DATA_DIR."""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from app.core.config import get_settings
from app.core.errors import ConfigurationError

KEY_FILE = "secret.key"


@lru_cache(maxsize=1)
def _fernet() -> Fernet:
    settings = get_settings()
    if settings.secret_key is not None:
        return _load(settings.secret_key.get_secret_value().encode(), "SECRET_KEY")
    path = settings.data_dir / KEY_FILE
    if not path.exists():
        _create_key_file(path)
    return _load(path.read_bytes().strip(), str(path))


def _load(key: bytes, source: str) -> Fernet:
    try:
        return Fernet(key)
    except ValueError:
        raise ConfigurationError(
            f"the secret key in {source} is not a Fernet key. Fix: use the output of "
            "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`."
        ) from None


def _create_key_file(path: Path) -> None:
    """A new key, readable by its owner only, published atomically (two processes may race)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(Fernet.generate_key())
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(draft, path)  # fails if another process published first: use theirs
        except FileExistsError:
            pass
    finally:
        draft.unlink(missing_ok=True)


def encrypt_secret(plain: str) -> str:
    """A Fernet token for `plain`; the plain text is never stored."""
    return _fernet().encrypt(plain.encode()).decode()


def decrypt_secret(token: str) -> str:
    """The plain secret of a token made by encrypt_secret."""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ConfigurationError(
            "a stored API key cannot be decrypted with this SECRET_KEY. Fix: restore the key that "
            "encrypted it, or set the provider's key again."
        ) from None


def secret_hint(plain: str) -> str:
    """What may be shown of a secret: "…" and its last four characters (nothing of a short one)."""
    return "…" + plain[-4:] if len(plain) >= 8 else "…"
