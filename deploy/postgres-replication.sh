#!/usr/bin/env bash
# Run once by the postgres image on a fresh volume (docker-entrypoint-initdb.d): replication
# connections (the scale profile's replica), password-checked like every other connection.
# On an existing volume, add the same line to pg_hba.conf by hand and reload.
set -euo pipefail
echo "host replication postgres all scram-sha-256" >> "$PGDATA/pg_hba.conf"
