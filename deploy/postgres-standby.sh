#!/usr/bin/env bash
# The `postgres-replica` service of docker-compose.yml's `scale` profile: on first start a base
# backup of the `postgres` service (pg_basebackup -R writes the standby's connection settings),
# then a hot standby that streams WAL from it. The password comes from PGPASSWORD.
set -euo pipefail
PGDATA=/var/lib/postgresql/data
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pg_basebackup -h postgres -U postgres -D "$PGDATA" -R -X stream -c fast
    chmod 700 "$PGDATA"
fi
exec postgres -D "$PGDATA" -c hot_standby=on
