// Lists a project's tasks with the types `arcana codegen` generated from the
// demo server (demo-types.ts), then adds a task and shows it arrive.
//
//   npx tsc -p examples && node dist-examples/examples/typed-node.js
import { createNodeClient } from "../src/node.js";
import type { CreateTaskParams, ProjectTasksItem, ProjectTasksParams } from "./demo-types.js";

const baseUrl = process.env.ARCANA_URL ?? "http://127.0.0.1:50051";
const client = createNodeClient({ baseUrl, token: process.env.ARCANA_TOKEN ?? "dev-alice" });

const params: ProjectTasksParams = { project_id: 1n };
const tasks = client.view<ProjectTasksItem>("project_tasks", params);
await tasks.ready();
const show = (label: string) => {
  console.log(label);
  for (const t of tasks.items) {
    console.log(`  #${t.id} ${t.title} [${t.status}]${t.assignee ? ` @${t.assignee.name}` : ""}`);
  }
};
show("tasks:");

const create: CreateTaskParams = { project_id: 1n, title: `typed example ${Date.now()}` };
await client.mutate<{ id: bigint }>("create_task", create);
show("after create_task:");

tasks.close();
client.close();
