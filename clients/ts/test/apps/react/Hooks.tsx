// The hooks page: one row from the cache, the client's status with every
// view's, and a window that grows. The test writes in PostgreSQL and waits
// for each part to show what the database holds.
import { memo, useState } from "react";
import { useRow, useStatus, useView, useWindow } from "@arcana/client/react";
import { projectId, rowId } from "../shared";

interface Task {
  id: bigint;
  title: string;
}

// Each part is memoized: it re-renders only when its own hook says so, not
// along with the views of the page.
const Row = memo(function Row({ id }: { id: string }) {
  const row = useRow<Task>("tasks", id);
  return <span id="row">{row ? row.title : "absent"}</span>;
});

const Status = memo(function Status() {
  const status = useStatus();
  return (
    <>
      <p>
        Connection: <span id="conn">{status.status}</span>
      </p>
      <ul id="views">
        {status.views.map((v, i) => (
          <li key={i}>{`${v.graph} ${v.status}${v.error ? ` ${v.error.codeName}` : ""}`}</li>
        ))}
      </ul>
    </>
  );
});

const Window = memo(function Window() {
  // New options re-anchor the window.
  const [limit, setLimit] = useState(2);
  const w = useWindow<Task>("task_window", { project_id: projectId }, { limit });
  return (
    <>
      <ol id="window">
        {w.items.map((t) => (
          <li key={String(t.id)}>{t.title}</li>
        ))}
      </ol>
      <p>
        After: <span id="has-after">{String(w.hasAfter)}</span> · Moving: <span id="moving">{String(w.moving)}</span>
      </p>
      <button id="more" onClick={() => void w.loadMore(2)}>
        More
      </button>
      <button id="one" onClick={() => setLimit(1)}>
        One
      </button>
    </>
  );
});

export function Hooks() {
  // The view brings the row into the cache; useRow only reads it.
  const tasks = useView<Task>("project_tasks", { project_id: projectId });
  // Refused by the server: its error shows in the status list.
  useView("no_such_graph");
  return (
    <main>
      <p>
        Tasks: <span id="count">{tasks.items.length}</span> · Row: <Row id={rowId} />
      </p>
      <Status />
      <Window />
    </main>
  );
}
