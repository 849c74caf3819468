-- Least privilege (docs/OPERATIONS.md, "Database roles"). Three roles, cluster-wide:
--   meterflow_owner    owns schema billing and everything in it; `meterflow db migrate` runs as it
--                      (a superuser may run migrations too: this file then hands every object
--                      to meterflow_owner). NOLOGIN when created here; the local stack and
--                      docker/ create it with a login.
--   meterflow_app      every other meterflow command: owns nothing, may read, append facts and
--                      change only the rows the design makes mutable (cursors, counters, drafts).
--                      Not a superuser and not the owner, so it can neither disable the
--                      immutability triggers (ALTER TABLE needs the owner) nor skip them
--                      (SET session_replication_role needs a superuser or a GRANT SET, never given).
--   meterflow_analyst  read-only (V002, V004); unchanged here.
-- Roles are cluster-wide: created only when missing, tolerating a concurrent creation.

-- Whoever applies this must own schema billing (or be a superuser): a database migrated before
-- by a superuser needs this file applied once by a superuser, which hands everything over.
DO $$
BEGIN
  IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
     AND NOT pg_has_role(current_user, (SELECT nspowner FROM pg_namespace WHERE nspname = 'billing'), 'USAGE') THEN
    RAISE EXCEPTION 'schema billing belongs to %, not to %',
      (SELECT nspowner::regrole FROM pg_namespace WHERE nspname = 'billing'), current_user
      USING HINT = 'apply this migration once as a superuser: '
                   'METERFLOW__POSTGRES__MIGRATION_USER=postgres meterflow db migrate';
  END IF;
END;
$$;

DO $$
DECLARE
  r text;
  can_create boolean := (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user);
BEGIN
  FOREACH r IN ARRAY ARRAY['meterflow_owner', 'meterflow_app'] LOOP
    CONTINUE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r);
    IF NOT can_create THEN
      RAISE EXCEPTION 'role % does not exist and % may not create roles', r, current_user
        USING HINT = 'create it as a superuser first (scripts/stack.sh and docker/ do): '
                     'CREATE ROLE ' || r || ' LOGIN PASSWORD ''...''';
    END IF;
    BEGIN
      -- the app role logs in (the local stack sets its password); the owner's login is the DBA's choice
      EXECUTE format('CREATE ROLE %I %s NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS',
                     r, CASE r WHEN 'meterflow_app' THEN 'LOGIN' ELSE 'NOLOGIN' END);
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
      NULL;  -- created concurrently by a migration of another database
    END;
  END LOOP;
END;
$$;

-- Run by a superuser (the test fixtures, a database migrated before this file): hand schema
-- billing and all its objects to meterflow_owner, so that later migrations run as the owner and
-- the SECURITY DEFINER function runs with the owner's rights, not a superuser's.
DO $$
DECLARE o record;
BEGIN
  IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    RETURN;
  END IF;
  EXECUTE 'ALTER SCHEMA billing OWNER TO meterflow_owner';
  -- `CREATE SCHEMA IF NOT EXISTS billing` (sinks/migrate.py) needs CREATE on the database
  EXECUTE format('GRANT CREATE ON DATABASE %I TO meterflow_owner', current_database());
  FOR o IN
    SELECT c.relname, c.relkind FROM pg_class c
     WHERE c.relnamespace = 'billing'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
       -- identity/serial sequences follow their table
       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                        AND d.objid = c.oid AND d.deptype IN ('a', 'i'))
  LOOP
    EXECUTE format('ALTER %s billing.%I OWNER TO meterflow_owner',
                   CASE o.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                  WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, o.relname);
  END LOOP;
  FOR o IN
    SELECT p.oid::regprocedure AS sig, p.prokind FROM pg_proc p
     WHERE p.pronamespace = 'billing'::regnamespace
  LOOP
    EXECUTE format('ALTER %s %s OWNER TO meterflow_owner',
                   CASE o.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, o.sig);
  END LOOP;
END;
$$;

-- meterflow_app: read everything, append to every table...
GRANT USAGE ON SCHEMA billing TO meterflow_app;
REVOKE CREATE ON SCHEMA billing FROM meterflow_app;
REVOKE ALL ON ALL TABLES IN SCHEMA billing FROM meterflow_app;
GRANT SELECT ON ALL TABLES IN SCHEMA billing TO meterflow_app;  -- tables and views
DO $$
DECLARE t text;
BEGIN
  FOR t IN SELECT c.relname FROM pg_class c
            WHERE c.relnamespace = 'billing'::regnamespace AND c.relkind IN ('r', 'p')
              AND c.relname <> 'schema_migrations'
  LOOP
    EXECUTE format('GRANT INSERT ON billing.%I TO meterflow_app', t);
  END LOOP;
END;
$$;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA billing TO meterflow_app;
-- ...change only what is mutable by design: cursors and counters, customers' current settings,
-- draft invoices (rebuilt while drafts; issued ones are guarded by triggers) and their links.
GRANT UPDATE ON billing.ledger_offsets, billing.duplicate_counts, billing.window_progress, billing.customers,
                billing.invoices, billing.invoice_number_counters, billing.invoice_line_links
  TO meterflow_app;
GRANT DELETE ON billing.invoices, billing.invoice_lines, billing.credit_applications,
                billing.invoice_line_links TO meterflow_app;
GRANT INSERT, DELETE ON billing.invoice_line_charges TO meterflow_app;  -- a view, written through
GRANT EXECUTE ON FUNCTION billing.issue_drafts(timestamptz, text[]),
                          billing.summarize_invoice_links() TO meterflow_app;

-- Tables that later migrations create: readable and appendable by the app, nothing more (a
-- migration that needs more grants it explicitly). For the roles that create them.
DO $$
BEGIN
  IF pg_has_role(current_user, 'meterflow_owner', 'USAGE') THEN
    ALTER DEFAULT PRIVILEGES FOR ROLE meterflow_owner IN SCHEMA billing
      GRANT SELECT, INSERT ON TABLES TO meterflow_app;
    ALTER DEFAULT PRIVILEGES FOR ROLE meterflow_owner IN SCHEMA billing
      GRANT USAGE, SELECT ON SEQUENCES TO meterflow_app;
  END IF;
  ALTER DEFAULT PRIVILEGES IN SCHEMA billing GRANT SELECT, INSERT ON TABLES TO meterflow_app;
  ALTER DEFAULT PRIVILEGES IN SCHEMA billing GRANT USAGE, SELECT ON SEQUENCES TO meterflow_app;
END;
$$;
