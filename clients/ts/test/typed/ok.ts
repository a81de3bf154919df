// Compiled with `tsc --noEmit`: codegen's Schema makes graph names, params,
// items and mutation results type-check. Each @ts-expect-error line must be
// an error, or tsc fails.
import { createNodeClient, typed } from "../../src/node.js";
import { useView, useWindow } from "../../src/react.js";
import type { Schema } from "../../examples/demo-types.js";

const client = typed<Schema>(createNodeClient({ baseUrl: "http://127.0.0.1:1", token: "dev-alice" }));

export async function use(): Promise<void> {
  const tasks = client.view("project_tasks", { project_id: 1 });
  const t = tasks.items[0]!;
  const title: string = t.title; // NOT NULL: not nullable
  const points: bigint | null = t.points; // nullable column
  const who: string | undefined = t.assignee?.name;
  void [title, points, who];
  client.view("my_tasks"); // no required params: may be left out
  const win = client.window("task_window", { project_id: 1 }, { limit: 20 });
  const position: bigint = win.items[0]!.position;
  const more: boolean = win.hasAfter;
  void [position, more];
  const hooked = (): string | undefined => useWindow(client, "task_window", { project_id: 1 }, { limit: 20 }).items[0]?.title;
  void hooked;
  // @ts-expect-error a window's params are checked too
  client.window("task_window", { project_id: "one" });

  // @ts-expect-error an unknown graph
  client.view("project_taks", { project_id: 1 });
  // @ts-expect-error a required param is missing
  client.view("project_tasks", {});
  // @ts-expect-error a param of the wrong type
  client.view("project_tasks", { project_id: "one" });
  // @ts-expect-error not one of the allowed statuses
  client.view("project_tasks", { project_id: 1, status: "someday" });
  // @ts-expect-error no such field
  void t.titel;
  // @ts-expect-error a nullable field is not a plain bigint
  const p: bigint = t.points;
  void p;

  const r = await client.mutate("create_task", { project_id: 1, title: "typed" });
  const id: bigint = r.data.id;
  void id;
  // @ts-expect-error mutation results are typed
  void r.data.nope;
  // @ts-expect-error an unknown mutation
  await client.mutate("create_tsk", {});
}

export function Component() {
  const v = useView(client, "project_tasks", { project_id: 2 });
  const first: string | undefined = v.items[0]?.title;
  // @ts-expect-error hooks check params too
  useView(client, "project_tasks", { project_id: true });
  return first;
}
