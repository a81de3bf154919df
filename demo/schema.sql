-- The demo task board: workspaces, users, projects and tasks.
CREATE TABLE workspaces (
    id   text PRIMARY KEY,
    name text NOT NULL
);

CREATE TABLE users (
    id           text PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces(id),
    name         text NOT NULL,
    email        text NOT NULL,
    -- Referenced with the workspace, so a row can only point at a user of
    -- its own workspace.
    CONSTRAINT users_in_workspace UNIQUE (workspace_id, id)
);

CREATE TABLE projects (
    id           bigserial PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces(id),
    name         text NOT NULL,
    owner_id     text,
    CONSTRAINT projects_in_workspace UNIQUE (workspace_id, id),
    CONSTRAINT projects_owner_in_workspace FOREIGN KEY (workspace_id, owner_id)
        REFERENCES users (workspace_id, id)
);

CREATE TABLE tasks (
    id           bigserial PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces(id),
    project_id   bigint NOT NULL,
    title        text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    status       text NOT NULL DEFAULT 'todo' CHECK (status IN ('todo', 'doing', 'done')),
    position     integer NOT NULL DEFAULT 0,
    assignee_id  text,
    estimate     numeric(12, 2),
    points       bigint,
    due_at       timestamptz,
    meta         jsonb NOT NULL DEFAULT '{}'::jsonb,
    notes        text NOT NULL DEFAULT '',
    CONSTRAINT tasks_project_in_workspace FOREIGN KEY (workspace_id, project_id)
        REFERENCES projects (workspace_id, id) ON DELETE CASCADE,
    CONSTRAINT tasks_assignee_in_workspace FOREIGN KEY (workspace_id, assignee_id)
        REFERENCES users (workspace_id, id)
);

CREATE INDEX tasks_project ON tasks (project_id, position, id);

-- Old row values in the WAL, so a task moving between projects is routed
-- to the views of both (see `route` in arcana.toml).
ALTER TABLE tasks REPLICA IDENTITY FULL;
ALTER TABLE projects REPLICA IDENTITY FULL;

INSERT INTO workspaces VALUES ('acme', 'Acme Corp'), ('globex', 'Globex');

INSERT INTO users VALUES
    ('alice', 'acme', 'Alice Liddell', 'alice@acme.test'),
    ('bob',   'acme', 'Bob Builder',   'bob@acme.test'),
    ('carol', 'globex', 'Carol Danvers', 'carol@globex.test');

INSERT INTO projects (id, workspace_id, name, owner_id) VALUES
    (1, 'acme', 'Launch', 'alice'),
    (2, 'acme', 'Operations', 'bob'),
    (3, 'globex', 'Secret plans', 'carol');
SELECT setval('projects_id_seq', 3);

INSERT INTO tasks (workspace_id, project_id, title, status, position, assignee_id, estimate, points, due_at, meta) VALUES
    ('acme', 1, 'Write the announcement', 'doing', 1, 'alice', 3.50, 3, '2026-12-01T09:00:00Z', '{"labels": ["writing"]}'),
    ('acme', 1, 'Book the venue',         'todo',  2, 'bob',   1.00, 1, NULL, '{}'),
    ('acme', 1, 'Order swag',             'todo',  3, NULL,    NULL, NULL, NULL, '{}'),
    ('acme', 1, 'Rehearse the demo',      'done',  4, 'alice', 2.25, 2, '2026-11-30T17:30:00Z', '{"labels": ["demo"], "priority": 1}'),
    ('acme', 2, 'Rotate the keys',        'todo',  1, 'bob',   0.50, 1, NULL, '{}'),
    ('acme', 2, 'Patch the servers',      'doing', 2, 'bob',   5.00, 8, NULL, '{}'),
    ('globex', 3, 'Take over the world',  'todo',  1, 'carol', 9999999999.99, 9007199254740993, NULL, '{"big": 9007199254740993}');

-- Graph evaluations and mutations run as this role (database.eval_role), so
-- the row-level security policies the server installs at startup
-- ([rls] install = true) apply even though the demo connects as a
-- superuser. Roles are shared by the cluster's databases.
DO $$
BEGIN
    CREATE ROLE arcana_eval NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
GRANT arcana_eval TO CURRENT_USER;
GRANT USAGE ON SCHEMA public TO arcana_eval;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO arcana_eval;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO arcana_eval;
-- Tables added later by the same role are covered too.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO arcana_eval;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE ON SEQUENCES TO arcana_eval;
