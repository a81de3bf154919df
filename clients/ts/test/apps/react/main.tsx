import { Suspense, useState } from "react";
import { createRoot } from "react-dom/client";
import { ArcanaProvider, useMutation, useView } from "@arcana/client/react";
import { client, hooksPage, projectId } from "../shared";
import { Hooks } from "./Hooks";

interface Task {
  id: bigint;
  title: string;
}

function Tasks() {
  // Suspense: the first render already has the rows.
  const view = useView<Task>("project_tasks", { project_id: projectId }, { suspense: true });
  const update = useMutation("update_task");
  const [clicked, setClicked] = useState(false);
  return (
    <main>
      <p>
        <span id="status">{view.status}</span> <span id="first-render">{String(view.items.length > 0)}</span>
      </p>
      <ul id="tasks">
        {view.items.map((t) => (
          <li key={String(t.id)}>{t.title}</li>
        ))}
      </ul>
      <button
        id="fail"
        onClick={() => {
          setClicked(true);
          // Not awaited, not caught: a failure must still not go unhandled.
          void update.mutate({ id: view.items[0]!.id, status: "someday" });
        }}
      >
        Fail
      </button>
      {clicked && update.error && <span id="mutation-error">{update.error.codeName}</span>}
    </main>
  );
}

createRoot(document.getElementById("app")!).render(
  <ArcanaProvider client={client}>
    {hooksPage ? (
      <Hooks />
    ) : (
      <Suspense fallback={<p id="fallback">loading</p>}>
        <Tasks />
      </Suspense>
    )}
  </ArcanaProvider>,
);
