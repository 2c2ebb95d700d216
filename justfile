# tasktracker recipes: the project's vocabulary.

default:
    @just --list

# Postgres, NATS, the worker and the API in the foreground (Ctrl-C stops all)
services *ARGS:
    uv run tasktracker services {{ARGS}}

# Apply the migrations (builds the HNSW indexes CONCURRENTLY)
migrate:
    uv run alembic upgrade head

# Coverage table and index health
status:
    uv run tasktracker status

# Embed every row without a current embedding
backfill *ARGS:
    uv run python backend/scripts/backfill_embeddings.py {{ARGS}}

# The outage and the cure, end to end, on the embedded defaults
demo *ARGS:
    uv run tasktracker demo {{ARGS}}

# The whole test suite
test *ARGS:
    uv run pytest {{ARGS}}

# Lint, format check and types
lint:
    uv run ruff check
    uv run ruff format --check
    uv run mypy backend/app bench testkit
    uv run lint-imports

# Benchmarks (writes docs/BENCHMARKS.md)
bench *ARGS:
    uv run tasktracker bench {{ARGS}}

# Mixed load at 32 clients for 5 minutes (writes docs/BENCHMARKS.md; --quick: 1 minute)
load *ARGS:
    uv run --group bench tasktracker bench load {{ARGS}}

# Postgres restart, provider outage and NATS restart under load (writes docs/BENCHMARKS.md)
faults *ARGS:
    uv run --group bench tasktracker bench faults {{ARGS}}
