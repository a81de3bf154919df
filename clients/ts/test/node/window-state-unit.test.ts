// The window state the React, Vue and Svelte bindings share, over a stand-in
// window whose moves the test settles by hand.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ArcanaError, Code, type Item, windowSpec } from "../../src/index.js";
import type { WindowSnapshot, WindowView } from "../../src/window-view.js";
import { emptyWindow, holdWindow, moveRunner, placeAt } from "../../src/window-state.js";

/** A window that records its calls; each move waits for `settle`. */
function standIn(name: string) {
  const spec = windowSpec({ limit: 2 });
  const snap = (error?: ArcanaError): WindowSnapshot => Object.freeze({ ...emptyWindow(spec), status: "live", error });
  let listener: (() => void) | undefined;
  const pending: { ok: () => void; fail: (e: ArcanaError) => void }[] = [];
  const calls: string[] = [];
  const anchors: [readonly unknown[], object | undefined][] = [];
  const w = {
    name,
    calls,
    anchors,
    closed: false,
    snapshot: snap(),
    subscribe(fn: () => void) {
      listener = fn;
      fn();
      return () => (listener = undefined);
    },
    close() {
      w.closed = true;
    },
    change(error?: ArcanaError) {
      w.snapshot = snap(error);
      listener?.();
    },
    move(call: string) {
      calls.push(call);
      return new Promise<WindowSnapshot>((ok, fail) => pending.push({ ok: () => ok(w.snapshot), fail }));
    },
    loadMore: (n: number) => w.move(`loadMore ${n}`),
    loadPrevious: (n: number) => w.move(`loadPrevious ${n}`),
    reanchor: (cursor: readonly unknown[], o?: object) => {
      anchors.push([cursor, o]);
      return w.move("reanchor");
    },
    settle: () => pending.shift()!.ok(),
    fail: (e: ArcanaError) => pending.shift()!.fail(e),
  };
  return w;
}
const asView = (w: ReturnType<typeof standIn>) => w as unknown as WindowView;
const tick = () => new Promise<void>((r) => setTimeout(r, 0));
const refused = () => new ArcanaError(Code.INVALID_ARGUMENT, "no such cursor");

describe("holdWindow", () => {
  it("shows a failed move's error until a move succeeds, and never rejects", async () => {
    let changes = 0;
    const held = holdWindow<Item>(() => changes++);
    assert.equal(held.snapshot(), undefined, "nothing held");
    assert.equal(await held.moves.loadMore(5), undefined, "a move without a window does nothing");

    const w = standIn("a");
    held.hold(asView(w));
    assert.equal(changes, 1, "the window calls back at once");
    assert.equal(held.handle, asView(w));
    assert.equal(held.snapshot(), w.snapshot, "no move error: the window's own state, as is");

    const failing = held.moves.loadMore(5);
    const err = refused();
    w.fail(err);
    assert.equal(await failing, undefined);
    assert.equal(changes, 2);
    assert.equal(held.snapshot()!.error, err);

    const own = refused();
    w.change(own);
    assert.equal(held.snapshot()!.error, own, "the window's own error comes first");
    w.change();

    const ok = held.moves.loadPrevious(1);
    w.settle();
    assert.equal(await ok, w.snapshot);
    assert.equal(held.snapshot(), w.snapshot, "a move that succeeds clears the error");
    const before = changes;
    const again = held.moves.reanchor(["c"], { limit: 4 });
    w.settle();
    await again;
    assert.equal(changes, before, "no error to clear: no change");
    assert.deepEqual(w.calls, ["loadMore 5", "loadPrevious 1", "reanchor"]);
    assert.deepEqual(w.anchors, [[["c"], { limit: 4 }]]);
  });

  it("lets go of a window: it closes, and its late moves change nothing", async () => {
    let changes = 0;
    const held = holdWindow<Item>(() => changes++);
    const a = standIn("a");
    held.hold(asView(a));
    const late = held.moves.loadMore(1);
    const b = standIn("b");
    held.hold(asView(b));
    assert.ok(a.closed, "holding another closes the first");
    const seen = changes;
    a.fail(refused());
    assert.equal(await late, undefined);
    assert.equal(changes, seen);
    assert.equal(held.snapshot()!.error, undefined);

    held.close();
    assert.ok(b.closed);
    assert.equal(held.handle, null);
    b.change();
    assert.equal(changes, seen, "unsubscribed on close");
  });
});

describe("moveRunner and placeAt", () => {
  it("reports each outcome with the window it ran on", async () => {
    const w = standIn("a");
    const seen: [string, ArcanaError | undefined][] = [];
    const run = moveRunner<Item>(
      () => asView(w),
      (h, e) => seen.push([(h as unknown as { name: string }).name, e]),
    );
    const spec = windowSpec({ cursor: [7], limit: 3, direction: "before", inclusive: true });
    const placed = run(placeAt(spec));
    w.settle();
    await placed;
    const err = refused();
    const failed = run((h) => h.loadMore(2));
    w.fail(err);
    assert.equal(await failed, undefined);
    await tick();
    assert.deepEqual(seen, [
      ["a", undefined],
      ["a", err],
    ]);
    assert.deepEqual(w.calls, ["reanchor", "loadMore 2"]);
    assert.deepEqual(w.anchors, [[spec.cursor, { limit: 3, direction: "before", inclusive: true }]]);
    assert.equal(w.anchors[0]?.[0], spec.cursor, "the spec's own cursor");
  });
});
