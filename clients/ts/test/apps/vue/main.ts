import { createApp } from "vue";
import { arcanaPlugin } from "@arcana/client/vue";
import App from "./App.vue";
import Hooks from "./Hooks.vue";
import { client, hooksPage } from "../shared";

createApp(hooksPage ? Hooks : App).use(arcanaPlugin(client)).mount("#app");
