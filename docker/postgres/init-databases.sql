-- Runs once, on the first start with an empty data volume (/docker-entrypoint-initdb.d), as the superuser.
-- One database and one owning role per consumer, so a leaked password opens one database only:
--   airflow      Airflow's metadata database
--   transactions the batch job's results (scored_transactions, rejected_transactions)
--   alerts       the alert service's events and deliveries
-- Passwords come from the container's environment (\getenv, psql 15+), never from this file: an unset one
-- leaves the variable undefined and the script fails instead of creating a role without a password.
\set ON_ERROR_STOP on
-- A failing statement is written to the server log with its text, which here carries passwords: not in this
-- session.
SET log_min_error_statement = panic;

\getenv airflow_password AIRFLOW_DB_PASSWORD
\getenv batch_job_password BATCH_DB_PASSWORD
\getenv alerting_password ALERTING_DB_PASSWORD

-- Stop before creating anything when a password is unset (psql leaves :'name' as it is: a syntax error) or
-- empty (division by zero). One statement per password: psql quotes the failing statement in its error, which
-- must not show another password. The results go nowhere, so no password reaches the container's output.
\o /dev/null
SELECT 1 / (length(:'airflow_password') > 0)::int;
SELECT 1 / (length(:'batch_job_password') > 0)::int;
SELECT 1 / (length(:'alerting_password') > 0)::int;
\o

CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;

CREATE ROLE batch_job LOGIN PASSWORD :'batch_job_password';
CREATE DATABASE transactions OWNER batch_job;

CREATE ROLE alerting LOGIN PASSWORD :'alerting_password';
CREATE DATABASE alerts OWNER alerting;

-- By default every role may connect to every database; only the owners may here.
REVOKE CONNECT, TEMPORARY ON DATABASE airflow, transactions, alerts FROM PUBLIC;
