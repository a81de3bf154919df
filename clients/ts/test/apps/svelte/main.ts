import { mount } from "svelte";
import App from "./App.svelte";
import Hooks from "./Hooks.svelte";
import { hooksPage } from "../shared";

mount(hooksPage ? Hooks : App, { target: document.getElementById("app")! });
