/**
 * Issue 20: `bhsd serve --redis`: two API processes in front of one queue and a worker; a CT
 * posted to one is answered by the other, the labels equal `bhsd segment`'s, the same CT again
 * is the same job, and /v1/health reports the queue and the live workers.
 */
import test from "ava";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readNifti } from "../lib/io/nifti.js";
import { writePhantoms } from "../lib/phantom/write.js";
import { ROOT } from "./helpers.js";
import { bhsd, bhsdRun, NO_REDIS, RedisServer, startWorker, type Proc } from "./queue-helpers.js";

// Labels from different processes are compared byte for byte: each would otherwise plan its
// convolutions by timing them, and a loaded machine could make two processes pick paths that
// round differently (a voxel near a tie then flips). Every child inherits this.
process.env.BHSD_WINOGRAD = "1";

const t = NO_REDIS ? test.skip : test.serial;
const title = (s: string) => (NO_REDIS ? `${s} (skipped: ${NO_REDIS})` : s);

async function api(p: Proc): Promise<string> {
  const [, addr] = (await p.waitLine(/^bhsd serving on (\S+)/, 60_000))!;
  return `http://${addr}`;
}

t(
  title("serve --redis: two API processes share the queue; status and labels by id from either; health shows depth and workers"),
  async (t) => {
    const dir = mkdtempSync(join(tmpdir(), "bhsd-queue-"));
    const redis = await RedisServer.start();
    const procs: Proc[] = [];
    try {
      const data = join(dir, "data"),
        shared = join(dir, "shared");
      const { cases } = await writePhantoms({ out: data, cases: 1, seed: 25, dims: [128, 128, 32] });
      const ctPath = join(data, "images", `${cases[0]!.name}.nii.gz`);
      const a = bhsd(["serve", "--redis", redis.url, "--port", "0", "--result-dir", shared], "api A");
      const b = bhsd(["serve", "--redis", redis.url, "--port", "0", "--result-dir", shared], "api B");
      procs.push(a, b);
      const [ua, ub] = [await api(a), await api(b)];

      const h0 = await (await fetch(`${ub}/v1/health`)).json();
      t.is(h0.workers, 0);

      const body = readFileSync(ctPath);
      const post = await fetch(`${ua}/v1/jobs/segment?model=demo`, {
        method: "POST",
        headers: { "content-type": "application/octet-stream" },
        body,
      });
      t.is(post.status, 202);
      const { id } = await post.json();
      const h1 = await (await fetch(`${ub}/v1/health`)).json();
      t.is(h1.queue.waiting, 1, "no worker yet: the job waits");

      const w = startWorker(redis.url);
      procs.push(w);
      await w.waitLine(new RegExp(`^done ${id} `), 180_000);
      const st = await (await fetch(`${ub}/v1/jobs/${id}`)).json();
      t.is(st.state, "completed");
      t.true(st.result.worker.endsWith(`:${w.pid}`));
      const h2 = await (await fetch(`${ua}/v1/health`)).json();
      t.is(h2.workers, 1);
      t.is(h2.queue.completed, 1);

      const lab = await fetch(`${ub}/v1/jobs/${id}/labels`);
      t.is(lab.status, 200);
      writeFileSync(join(dir, "api.nii.gz"), Buffer.from(await lab.arrayBuffer()));
      const seg = await bhsdRun([
        "segment",
        ctPath,
        "--model",
        join(ROOT, "models", "demo.onnx"),
        "--out",
        join(dir, "local.nii.gz"),
        "--quiet",
      ]);
      t.is(seg.code, 0, seg.stderr);
      const [x, y] = [await readNifti(join(dir, "api.nii.gz")), await readNifti(join(dir, "local.nii.gz"))];
      t.true(
        Buffer.from(x.data.buffer, x.data.byteOffset, x.data.byteLength).equals(
          Buffer.from(y.data.buffer, y.data.byteOffset, y.data.byteLength),
        ),
      );

      // the same CT to the other API process: the same job, already done, not redone
      const again = await fetch(`${ub}/v1/jobs/segment?model=demo`, {
        method: "POST",
        headers: { "content-type": "application/octet-stream" },
        body,
      });
      t.deepEqual([again.status, (await again.json()).id], [202, id]);
      t.is((await (await fetch(`${ua}/v1/jobs/${id}`)).json()).state, "completed");
      t.is(w.count(/^taken /), 1);

      // client faults
      t.is((await fetch(`${ua}/v1/jobs/seg-${"0".repeat(40)}`)).status, 404);
      t.is((await fetch(`${ua}/v1/jobs/nope`)).status, 400);
      const bad = await fetch(`${ua}/v1/jobs/segment?model=demo`, {
        method: "POST",
        headers: { "content-type": "application/octet-stream" },
        body: "not a nifti",
      });
      t.is(bad.status, 400);
      t.is((await bad.json()).error, "bad_nifti");

      // with a token: every route but /v1/health needs it
      const c = bhsd(["serve", "--redis", redis.url, "--port", "0", "--result-dir", shared, "--token", "s3cret"], "api C");
      procs.push(c);
      const uc = await api(c);
      t.is((await fetch(`${uc}/v1/health`)).status, 200);
      t.is((await fetch(`${uc}/v1/jobs/${id}`)).status, 401);
      t.is((await fetch(`${uc}/v1/jobs/${id}`, { headers: { authorization: "bearer s3cret" } })).status, 200);

      for (const p of procs) p.kill("SIGTERM");
      t.deepEqual(await Promise.all(procs.map(async (p) => (await p.exited).code)), [0, 0, 0, 0]);
    } finally {
      for (const p of procs) p.kill("SIGKILL");
      await redis.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

t(
  title(
    "serve --redis: uploads past maxUploads are answered 503 busy before their body is read; a slot comes back when an upload's connection closes",
  ),
  async (t) => {
    const { serveQueue } = await import("../lib/queue/rest.js");
    const net = await import("node:net");
    const redis = await RedisServer.start();
    const shared = mkdtempSync(join(tmpdir(), "bhsd-queue-up-"));
    const app = await serveQueue({ redis: redis.url, sharedDir: shared, port: 0, maxUploads: 1 });
    try {
      const port = (app.server.address() as { port: number }).port;
      const url = `http://127.0.0.1:${port}/v1/jobs/segment`;
      // one upload that declares 100 kB and sends 10 bytes: it holds the only slot
      const slow = net.connect(port, "127.0.0.1");
      await new Promise<void>((r) => slow.once("connect", () => r()));
      slow.write(
        `POST /v1/jobs/segment HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n${"x".repeat(10)}`,
      );
      await new Promise((r) => setTimeout(r, 300));
      const busy = await fetch(url, { method: "POST", headers: { "content-type": "application/octet-stream" }, body: new Uint8Array(400) });
      t.is(busy.status, 503);
      t.is(busy.headers.get("retry-after"), "5");
      t.like(await busy.json(), { error: "busy" });
      slow.destroy();
      await new Promise((r) => setTimeout(r, 300));
      // clients that leave mid-upload give their slot back once each (twice would admit more)
      const partial = `POST /v1/jobs/segment HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\nxx`;
      for (let i = 0; i < 2; i++) {
        const gone = net.connect(port, "127.0.0.1");
        await new Promise<void>((r) => gone.once("connect", () => r()));
        gone.write(partial);
        await new Promise((r) => setTimeout(r, 200));
        gone.destroy();
        await new Promise((r) => setTimeout(r, 200));
      }
      const holder = net.connect(port, "127.0.0.1");
      await new Promise<void>((r) => holder.once("connect", () => r()));
      holder.write(partial);
      await new Promise((r) => setTimeout(r, 300));
      const still = await fetch(url, {
        method: "POST",
        headers: { "content-type": "application/octet-stream" },
        body: new Uint8Array(400),
      });
      t.is(still.status, 503, "a slot was given back twice");
      await still.arrayBuffer();
      holder.destroy();
      await new Promise((r) => setTimeout(r, 300));
      const next = await fetch(url, { method: "POST", headers: { "content-type": "application/octet-stream" }, body: new Uint8Array(400) });
      t.not(next.status, 503, await next.text());
    } finally {
      await app.close();
      await redis.stop();
      rmSync(shared, { recursive: true, force: true });
    }
  },
);

test("a job's error as the REST front shows it: shared-folder paths relative, other paths cut to their last part", async (t) => {
  const { publicError } = await import("../lib/queue/rest.js");
  const shared = "/srv/bhsd-shared";
  t.is(
    publicError('worker node7:4242: model "demo" in /opt/site/models is not the one submitted (sha256 abc…)', shared),
    'worker node7:4242: model "demo" in …/models is not the one submitted (sha256 abc…)',
  );
  t.is(
    publicError("the job's output /srv/bhsd-shared/results/seg-1.nii.gz is its input /srv/bhsd-shared/inputs/ab.nii.gz; refusing", shared),
    "the job's output results/seg-1.nii.gz is its input inputs/ab.nii.gz; refusing",
  );
  t.is(publicError("/home/op/data/x.nii.gz: not a regular file", shared), "…/x.nii.gz: not a regular file");
  t.is(publicError("cannot read /etc/passwd.", shared), "cannot read …/passwd.");
  t.is(publicError("file:///opt/models/m.onnx not found", shared), "file://…/m.onnx not found");
  t.is(publicError("paths [/opt/a/b, /opt/c]", shared), "paths […/b, …/c]");
  // not paths: a URL's own path, a fraction, N/A, a lone slash
  for (const m of ["https://cdn/srv/bhsd-shared/x", "1/2 and N/A and a / b"]) t.is(publicError(m, shared), m);
});
