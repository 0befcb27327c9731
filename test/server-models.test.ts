import test from "ava";
import { statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadModel, type Model } from "../lib/index.js";
import { ModelCache } from "../lib/server/models.js";
import { ROOT } from "./helpers.js";
import { pointwiseBytes, tempDir } from "./server-helpers.js";

// The service's model cache: least recently used first out, by bytes (weights, or the .onnx size), a model in
// use never disposed under its request, every model loaded once however many ask at once.

/** Model files of the given channel counts (their sizes differ), and a loader that counts loads and disposals. */
function setup(classes: number[]) {
  const dir = tempDir("bhsd-cache-");
  const paths = classes.map((c, i) => {
    const p = join(dir, `m${i}.onnx`);
    writeFileSync(p, pointwiseBytes(c));
    return p;
  });
  const loads: string[] = [];
  const disposed: string[] = [];
  const load = async (p: string): Promise<Model> => {
    loads.push(p);
    const m = await loadModel(p);
    const dispose = m.dispose.bind(m);
    m.dispose = () => {
      disposed.push(p);
      dispose();
    };
    return m;
  };
  return { paths, sizes: paths.map((p) => statSync(p).size), loads, disposed, load };
}

test("concurrent requests for one model share one load", async (t) => {
  const s = setup([6]);
  const cache = new ModelCache(1e9, s.load);
  const leases = await Promise.all([1, 2, 3].map(() => cache.acquire("a", s.paths[0]!)));
  t.is(s.loads.length, 1);
  t.true(leases.every((l) => l.model === leases[0]!.model));
  for (const l of leases) l.release();
  t.deepEqual(cache.stats, { names: ["a"], bytes: s.sizes[0]!, budget: 1e9 });
  t.deepEqual(s.disposed, []);
});

test("over the byte budget the least recently used model is dropped and disposed; a used one moves to the back", async (t) => {
  const s = setup([6, 7, 8]);
  // room for any two of the three files, not three
  const budget = s.sizes.reduce((a, b) => a + b, 0) - Math.min(...s.sizes);
  const cache = new ModelCache(budget, s.load);
  (await cache.acquire("a", s.paths[0]!)).release();
  (await cache.acquire("b", s.paths[1]!)).release();
  (await cache.acquire("a", s.paths[0]!)).release(); // a is now the most recently used
  (await cache.acquire("c", s.paths[2]!)).release();
  t.deepEqual(cache.stats.names, ["a", "c"]);
  t.deepEqual(s.disposed, [s.paths[1]]);
  t.true(cache.stats.bytes <= cache.budget);
  // b comes back: loaded again
  (await cache.acquire("b", s.paths[1]!)).release();
  t.is(s.loads.filter((p) => p === s.paths[1]).length, 2);
  t.deepEqual(cache.stats.names, ["c", "b"]);
});

test("a model in use is disposed only when its request lets go, and still runs meanwhile", async (t) => {
  const s = setup([6, 7]);
  const cache = new ModelCache(Math.max(...s.sizes), s.load); // one model at a time
  const a = await cache.acquire("a", s.paths[0]!);
  (await cache.acquire("b", s.paths[1]!)).release();
  t.deepEqual(cache.stats.names, ["b"]);
  t.deepEqual(s.disposed, []); // a is dropped from the cache but its request still holds it
  const y = await a.model.run({ data: new Float32Array(8), shape: [1, 1, 2, 2, 2] });
  t.deepEqual(y.shape, [1, 6, 2, 2, 2]);
  a.release();
  a.release(); // idempotent
  t.deepEqual(s.disposed, [s.paths[0]]);
});

test("a model larger than the budget still serves, alone; close() disposes what is left", async (t) => {
  const s = setup([6, 7]);
  const cache = new ModelCache(1, s.load);
  const a = await cache.acquire("a", s.paths[0]!);
  t.deepEqual(cache.stats.names, ["a"]);
  a.release();
  (await cache.acquire("b", s.paths[1]!)).release();
  t.deepEqual(cache.stats.names, ["b"]);
  t.deepEqual(s.disposed, [s.paths[0]]);
  cache.close();
  await new Promise((r) => setImmediate(r));
  t.deepEqual(s.disposed, [s.paths[0], s.paths[1]]);
  await t.throwsAsync(cache.acquire("a", s.paths[0]!), { message: /closed/ });
});

test("a failed load is not cached: the next request tries again", async (t) => {
  const s = setup([6]);
  const cache = new ModelCache(1e9, s.load);
  await t.throwsAsync(cache.acquire("x", join(tempDir("bhsd-cache-"), "missing.onnx")), { code: "ENOENT" });
  t.deepEqual(cache.stats.names, []);
  t.throws(() => new ModelCache(0), { instanceOf: RangeError, message: /budget/ });
});

test("a model whose tensors live in external data is counted by its weights, not its small .onnx file", async (t) => {
  const fixture = join(ROOT, "test", "fixtures", "external-data", "one-file");
  const cache = new ModelCache(1e9);
  const lease = await cache.acquire("ext", join(fixture, "resencunet.onnx"));
  const onnx = statSync(join(fixture, "resencunet.onnx")).size,
    data = statSync(join(fixture, "resencunet.onnx.data")).size;
  t.true(onnx < data / 2, `the fixture keeps its weights outside (${onnx} of ${data} bytes)`);
  t.true(cache.stats.bytes >= data, `counted ${cache.stats.bytes} bytes for ${data} bytes of external data`);
  lease.release();
  cache.close();
});
