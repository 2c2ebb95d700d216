FROM python:3.11-slim
COPY --from=ghcr.io/astral-sh/uv:latest /uv /usr/local/bin/uv
# An unprivileged user owns nothing but its data folder; the code stays root-owned, read-only to it.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app/.data --no-create-home app
WORKDIR /app
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-default-groups --no-install-project
COPY backend ./backend
RUN uv sync --frozen --no-default-groups \
    && install -d -o app -g app -m 0700 /app/.data
ENV PATH="/app/.venv/bin:$PATH" OMP_WAIT_POLICY=PASSIVE DATA_DIR=/app/.data HOME=/app/.data
USER 10001:10001
CMD ["uvicorn", "app.main:create_app_from_env", "--factory", "--host", "0.0.0.0", "--port", "8000"]
