"""Secrets at rest: provider API keys are Fernet-encrypted with a key from settings or DATA_DIR."""

from __future__ import annotations

import os
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken

from app.core.config import get_settings
from app.core.errors import ConfigurationError


@lru_cache(maxsize=1)
def _fernet() -> Fernet:
    settings = get_settings()
    if settings.secret_key is not None:
        return Fernet(settings.secret_key.get_secret_value().encode())
    path = settings.data_dir / "secret.key"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(Fernet.generate_key())
    return Fernet(path.read_bytes().strip())


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
    """What may be shown of a secret: its last four characters."""
    return "…" + plain[-4:] if len(plain) >= 8 else "…"
