// Issue 18 #12: results are files under a configurable folder, capped in bytes and count, that
// expire, and that a restart of the service on the same folder still serves.
import test from "ava";
import { readdirSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { readNifti } from "../lib/index.js";
import { ResultStore } from "../lib/server/results.js";
import { ctNifti, modelFolder, octet, start, tempDir } from "./server-helpers.js";

const modelDir = modelFolder();

async function segmentOnce(url: string, dims: [number, number, number] = [32, 32, 4]): Promise<string> {
  const r = await fetch(`${url}/v1/segment?model=tiny`, { method: "POST", body: ctNifti(dims), headers: octet });
  if (r.status !== 200) throw new Error(`segment answered ${r.status}: ${await r.text()}`);
  return (await r.json()).labels as string;
}

test.serial("a result URL answered with 200 still works after the service restarts on the same folder", async (t) => {
  const resultDir = tempDir("bhsd-res-");
  const a = await start({ modelDir, resultDir });
  let path: string, first: Buffer;
  try {
    path = await segmentOnce(a.url, [36, 40, 6]);
    const r = await fetch(a.url + path);
    t.is(r.status, 200);
    t.is(r.headers.get("content-type"), "application/gzip");
    first = Buffer.from(await r.arrayBuffer());
  } finally {
    await a.close();
  }
  const b = await start({ modelDir, resultDir });
  try {
    const r = await fetch(b.url + path);
    t.is(r.status, 200);
    const again = Buffer.from(await r.arrayBuffer());
    t.true(again.equals(first));
    t.deepEqual((await readNifti(again)).dims, [36, 40, 6]);
  } finally {
    await b.close();
  }
});

test.serial("results expire, on disk too, and the count and byte caps drop the oldest", async (t) => {
  const resultDir = tempDir("bhsd-res-");
  const s = await start({ modelDir, resultDir, resultTtlMs: 5000, resultMaxCount: 2 });
  // (a TTL long enough that three segmentations and their fetches fit in it on a loaded machine)
  try {
    const p1 = await segmentOnce(s.url),
      p2 = await segmentOnce(s.url),
      p3 = await segmentOnce(s.url);
    t.is((await fetch(s.url + p1)).status, 404); // the oldest went for the third
    t.is((await fetch(s.url + p2)).status, 200);
    t.is((await fetch(s.url + p3)).status, 200);
    t.is(readdirSync(resultDir).length, 2);
    await new Promise((r) => setTimeout(r, 5200));
    const gone = await fetch(s.url + p3);
    t.is(gone.status, 404);
    t.like(await gone.json(), { error: "not_found" });
  } finally {
    await s.close();
  }

  // bytes: each result here is a few hundred bytes; a cap of two results' worth keeps two
  const dir2 = tempDir("bhsd-res-");
  const one = await start({ modelDir, resultDir: dir2 });
  let size: number;
  try {
    await segmentOnce(one.url);
    size = statSync(join(dir2, readdirSync(dir2)[0]!)).size;
  } finally {
    await one.close();
  }
  const capped = await start({ modelDir, resultDir: tempDir("bhsd-res-"), resultMaxBytes: 2 * size + size / 2 });
  try {
    const ps = [];
    for (let i = 0; i < 4; i++) ps.push(await segmentOnce(capped.url));
    const codes = await Promise.all(ps.map(async (p) => (await fetch(capped.url + p)).status));
    t.deepEqual(codes, [404, 404, 200, 200]);
    const files = readdirSync(capped.resultDir);
    t.is(files.length, 2);
    t.true(files.reduce((a, f) => a + statSync(join(capped.resultDir, f)).size, 0) <= 2 * size + size / 2);
  } finally {
    await capped.close();
  }
});

test("ResultStore at start: drops expired files and leftovers of cut writes, keeps the rest, ignores other files", (t) => {
  const dir = tempDir("bhsd-res-");
  const live = "a".repeat(32),
    old = "b".repeat(32);
  writeFileSync(join(dir, `${live}.nii.gz`), Buffer.alloc(10));
  writeFileSync(join(dir, `${old}.nii.gz`), Buffer.alloc(10));
  const hourAgo = new Date(Date.now() - 3600_000);
  utimesSync(join(dir, `${old}.nii.gz`), hourAgo, hourAgo);
  writeFileSync(join(dir, `.tmp-${"c".repeat(32)}`), Buffer.alloc(5));
  writeFileSync(join(dir, "notes.txt"), "not ours");
  const store = new ResultStore({ dir, ttlMs: 60_000, maxBytes: 1000, maxCount: 10 });
  t.deepEqual(readdirSync(dir).sort(), [`${live}.nii.gz`, "notes.txt"]);
  t.deepEqual(store.usage, { count: 1, bytes: 10 });
});

test("ResultStore: refuses a result larger than the whole cap (507), and ids that are not 32 hex digits", async (t) => {
  const store = new ResultStore({ dir: tempDir("bhsd-res-"), ttlMs: 60_000, maxBytes: 100, maxCount: 10 });
  const e = await t.throwsAsync(store.put(Buffer.alloc(101)));
  t.like(e, { status: 507, code: "result_too_large" });
  const id = await store.put(Buffer.alloc(100));
  t.regex(id, /^[0-9a-f]{32}$/);
  t.truthy(await store.open(id));
  for (const bad of ["../x", id.toUpperCase(), `${id}/..`, ""]) t.is(await store.open(bad), undefined, bad);
});
