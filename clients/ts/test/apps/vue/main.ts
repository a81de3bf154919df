import { createApp } from "vue";
import { arcanaPlugin } from "@arcana/client/vue";
import App from "./App.vue";
import { client } from "../shared";

createApp(App).use(arcanaPlugin(client)).mount("#app");
