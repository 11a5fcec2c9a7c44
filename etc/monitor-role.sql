-- The agent's monitoring role: a non-superuser with pg_monitor (reads every session, lock and
-- pg_stat_statements entry, including other users' query texts) and at most 5 connections.
-- Idempotent: run it again after changing nothing, or to repair the role's attributes.
--
--   psql -U postgres -d postgres -f etc/monitor-role.sql
--   psql -U postgres -c "\password bitville_monitor"
--
-- pg_stat_statements must also be in shared_preload_libraries and created in the database the
-- agent connects to:   CREATE EXTENSION IF NOT EXISTS pg_stat_statements;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'bitville_monitor') THEN
        CREATE ROLE bitville_monitor LOGIN;
    END IF;
END
$$;

ALTER ROLE bitville_monitor LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
    CONNECTION LIMIT 5;
GRANT pg_monitor TO bitville_monitor;

-- Defence in depth: the agent sets these per session too, but a session opened by hand with
-- this role gets them as well.
ALTER ROLE bitville_monitor SET default_transaction_read_only = on;
ALTER ROLE bitville_monitor SET statement_timeout = '5s';
ALTER ROLE bitville_monitor SET lock_timeout = '100ms';
