// A small task board page: the browser test loads it in Chromium.
import { StrictMode, useState } from "react";
import { createRoot } from "react-dom/client";
import { useMutation, useView } from "../../src/react.js";
import { createWebClient } from "../../src/web.js";

interface Task {
  id: bigint;
  title: string;
  status: string;
  points: bigint | null;
  assignee?: { id: string; name: string };
}

const q = new URLSearchParams(location.search);
const client = createWebClient({ baseUrl: q.get("server")!, token: q.get("token") ?? undefined });
const projectId = BigInt(q.get("project") ?? "1");
// For the test: it drops the session and reads the frame counters.
(window as unknown as { arcana: typeof client }).arcana = client;

function Board() {
  const view = useView<Task>(client, "project_tasks", { project_id: projectId });
  const create = useMutation<{ id: bigint }>(client, "create_task");
  const [title, setTitle] = useState("");
  return (
    <main>
      <h1>Project {String(projectId)}</h1>
      <p>
        Status: <span id="status">{view.status}</span> · Total: <span id="total">{String(view.total ?? "")}</span> ·
        Version: <span id="version">{String(view.version)}</span>
      </p>
      {view.error && <p id="error">{view.error.message}</p>}
      <ul id="tasks">
        {view.items.map((t) => (
          <li key={String(t.id)} data-id={String(t.id)}>
            <b>{t.title}</b> <i>{t.status}</i> {t.assignee ? `— ${t.assignee.name}` : ""}{" "}
            {t.points !== null ? `(${String(t.points)} pts)` : ""}
          </li>
        ))}
      </ul>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          void create.mutate({ project_id: projectId, title }).then(() => setTitle(""), () => {});
        }}
      >
        <input id="title" value={title} onChange={(e) => setTitle(e.target.value)} placeholder="New task" />
        <button id="add" type="submit" disabled={create.pending || title === ""}>
          Add
        </button>
        {create.error && <span id="mutation-error">{create.error.message}</span>}
        {create.data && <span id="created">created #{String(create.data.id)}</span>}
      </form>
    </main>
  );
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <Board />
  </StrictMode>,
);
