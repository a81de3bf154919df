// A list of thousands of tasks scrolled through one live window: the browser
// test loads it in Chromium. The list's seeded positions are 1..N in order,
// so the row at index k starts the window after the cursor (k + 1, 0).
import { StrictMode, useEffect, useRef } from "react";
import { createRoot } from "react-dom/client";
import { useWindow } from "../../src/react.js";
import { createWebClient } from "../../src/web.js";

interface Task {
  id: bigint;
  title: string;
  position: bigint;
}

const q = new URLSearchParams(location.search);
const client = createWebClient({ baseUrl: q.get("server")!, token: q.get("token") ?? undefined });
const projectId = BigInt(q.get("project") ?? "1");
const rows = Number(q.get("rows") ?? "10000");
const ROW = 20;
const LIMIT = 40;
/** Every list the component rendered: the index it starts at and the positions it shows. */
const renders: { start: number; positions: number[] }[] = [];
(window as unknown as { renders: typeof renders }).renders = renders;

function BigList() {
  const w = useWindow<Task>(client, "task_window", { project_id: projectId }, { limit: LIMIT });
  const list = useRef<HTMLDivElement>(null);
  // The index of the window's first row, from the cursor it was placed with.
  const start = w.window.cursor.length === 0 ? 0 : Number(w.window.cursor[0]!.kind.value) - 1;
  const positions = w.items.map((t) => Number(t.position));
  useEffect(() => {
    if (w.epoch !== undefined) renders.push({ start, positions });
  });
  const onScroll = () => {
    const first = Math.floor(list.current!.scrollTop / ROW);
    const visible = Math.ceil(list.current!.clientHeight / ROW);
    // Re-anchor when the rows in view are not all in the window; keep a few above.
    if (first < start || first + visible > start + w.items.length) {
      const at = Math.max(0, Math.min(first - 5, rows - LIMIT));
      void w.reanchor([BigInt(at + 1), 0n], { direction: "after", inclusive: false, limit: LIMIT });
    }
  };
  return (
    <main>
      <p>
        Status: <span id="status">{w.status}</span> · Start: <span id="start">{start}</span> · Moving:{" "}
        <span id="moving">{String(w.moving)}</span> · Before: <span id="before">{String(w.hasBefore)}</span> ·
        After: <span id="after">{String(w.hasAfter)}</span>
      </p>
      {w.error && <p id="error">{w.error.message}</p>}
      <div id="list" ref={list} onScroll={onScroll} style={{ height: 400, overflowY: "auto", position: "relative" }}>
        <div style={{ height: rows * ROW }} />
        <ol style={{ position: "absolute", top: start * ROW, margin: 0, padding: 0, listStyle: "none", width: "100%" }}>
          {w.items.map((t) => (
            <li key={String(t.id)} data-pos={String(t.position)} style={{ height: ROW, lineHeight: `${ROW}px` }}>
              {t.title}
            </li>
          ))}
        </ol>
      </div>
    </main>
  );
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <BigList />
  </StrictMode>,
);
