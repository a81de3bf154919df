// Must NOT compile: a typo in a graph name (the typed test checks that tsc fails here).
import { createNodeClient, typed } from "../../src/node.js";
import type { Schema } from "../../examples/demo-types.js";

const client = typed<Schema>(createNodeClient({ baseUrl: "http://127.0.0.1:1" }));
client.view("project_taks", { project_id: 1 });
