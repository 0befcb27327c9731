// Issue 18 #7: a request is admitted before its body is read, decoded or a model is loaded, and
// what an admitted request decodes is capped per request and over all requests in flight.
import test from "ava";
import { Admission } from "../lib/server/admission.js";
import { HttpError } from "../lib/server/errors.js";
import { healthMs, modelFolder, nifti, octet, start } from "./server-helpers.js";

const modelDir = modelFolder();

/** A request body that sends `first` bytes, then waits until release() (which ends it). */
function heldBody(first: number) {
  let ctl!: ReadableStreamDefaultController<Uint8Array>;
  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      ctl = c;
      c.enqueue(new Uint8Array(first));
    },
  });
  return { stream, release: () => ctl.close() };
}

/** A body of `total` bytes in 64 KiB chunks that counts how much of it the sender was asked for. */
function countedBody(total: number) {
  let pulled = 0;
  const stream = new ReadableStream<Uint8Array>({
    pull(c) {
      if (pulled >= total) return c.close();
      const n = Math.min(65536, total - pulled);
      pulled += n;
      c.enqueue(new Uint8Array(n));
    },
  });
  return { stream, pulled: () => pulled };
}

async function waitFor(cond: () => Promise<boolean>, ms = 10_000) {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error("timed out waiting");
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Two gzipped float64 zero volumes of n³ voxels (8·n³ bytes each decoded) as evaluate's form. */
function evaluateForm(n: number): FormData {
  const vol = nifti(new Float64Array(n ** 3), [n, n, n], "float64");
  const fd = new FormData();
  fd.append("gt", new Blob([vol]), "gt.nii.gz");
  fd.append("pred", new Blob([vol]), "pred.nii.gz");
  return fd;
}

test.serial("with every slot taken, requests are refused (503) before their bodies are read or decoded", async (t) => {
  const s = await start({ modelDir, concurrency: 1, queue: 0 });
  const held = heldBody(100);
  try {
    // The one slot: a request admitted and still sending its body.
    const holder = fetch(`${s.url}/v1/components`, { method: "POST", body: held.stream, headers: octet, duplex: "half" } as RequestInit);
    await waitFor(async () => (await (await fetch(`${s.url}/v1/health`)).json()).active === 1);

    // Four multipart evaluations of two 64 MB (decoded) volumes each: refused, nothing decoded.
    const rss0 = process.memoryUsage().rss;
    const form = evaluateForm(200);
    const rs = await Promise.all([0, 1, 2, 3].map(() => fetch(`${s.url}/v1/evaluate`, { method: "POST", body: form })));
    for (const r of rs) {
      t.is(r.status, 503);
      t.is(r.headers.get("retry-after"), "5");
      t.like(await r.json(), { error: "busy" });
    }
    const grew = (process.memoryUsage().rss - rss0) / 2 ** 20;
    t.true(grew < 200, `RSS grew ${grew.toFixed(0)} MB; decoding the four would take 512 MB`);

    // A 64 MB streamed body: the 503 comes without the server reading it (only what the
    // loopback socket's buffers take leaves the sender).
    const big = countedBody(64 * 2 ** 20);
    const r = await fetch(`${s.url}/v1/segment?model=tiny`, {
      method: "POST",
      body: big.stream,
      headers: octet,
      duplex: "half",
    } as RequestInit);
    t.is(r.status, 503);
    t.true(big.pulled() < 24 * 2 ** 20, `${(big.pulled() / 2 ** 20).toFixed(1)} MB of the body were sent`);

    held.release(); // the holder's 100 bytes are no NIfTI
    const h = await holder;
    t.is(h.status, 400);
    t.like(await h.json(), { error: "bad_nifti" });
    t.deepEqual(await (await fetch(`${s.url}/v1/health`)).json(), { status: "ok", active: 0, waiting: 0 });
  } finally {
    await s.close();
  }
});

test.serial("a queued request's body is read only once it is admitted", async (t) => {
  const s = await start({ modelDir, concurrency: 1, queue: 2 });
  const held = heldBody(100);
  try {
    const holder = fetch(`${s.url}/v1/components`, { method: "POST", body: held.stream, headers: octet, duplex: "half" } as RequestInit);
    await waitFor(async () => (await (await fetch(`${s.url}/v1/health`)).json()).active === 1);
    const big = countedBody(64 * 2 ** 20);
    const queued = fetch(`${s.url}/v1/segment?model=tiny`, {
      method: "POST",
      body: big.stream,
      headers: octet,
      duplex: "half",
    } as RequestInit);
    await waitFor(async () => (await (await fetch(`${s.url}/v1/health`)).json()).waiting === 1);
    await new Promise((r) => setTimeout(r, 500));
    t.true(big.pulled() < 24 * 2 ** 20, `${(big.pulled() / 2 ** 20).toFixed(1)} MB of the waiting body were sent`);
    held.release();
    t.is((await holder).status, 400);
    const r = await queued; // admitted now: read whole, then found to be no NIfTI
    t.is(r.status, 400);
    t.like(await r.json(), { error: "bad_nifti" });
    t.is(big.pulled(), 64 * 2 ** 20);
  } finally {
    await s.close();
  }
});

test.serial("decoded bytes per request are capped (413 naming the volume); the header's voxel count before inflating", async (t) => {
  const s = await start({ modelDir, maxRequestBytes: 12 * 2 ** 20 });
  try {
    // gt and pred decode to 8 MB each: the second passes the 12 MB cap.
    const r = await fetch(`${s.url}/v1/evaluate`, { method: "POST", body: evaluateForm(100) });
    t.is(r.status, 413);
    const b = await r.json();
    t.is(b.error, "too_large");
    t.regex(b.message, /^pred decodes to 8000000 bytes.*8000000 bytes.*12582912-byte limit per request/);
  } finally {
    await s.close();
  }
  const s2 = await start({ modelDir, maxVoxels: 1_000_000 });
  try {
    // A header claiming 2000³ int16 voxels over a few bytes: refused from the header at once.
    const head = nifti(new Int16Array(8), [2000, 2000, 2000], "int16");
    const t0 = performance.now();
    const r = await fetch(`${s2.url}/v1/components`, { method: "POST", body: head, headers: octet });
    t.is(r.status, 413);
    t.regex((await r.json()).message, /labels has 8000000000 voxels; this server takes at most 1000000/);
    t.true(performance.now() - t0 < 2000);
    t.true((await healthMs(s2.url)) < 2000);
  } finally {
    await s2.close();
  }
});

test("Admission: slots, the queue, the in-flight byte budget, and a waiting request that goes away", async (t) => {
  const a = new Admission({ concurrency: 1, queue: 1, maxRequestBytes: 100, maxInflightBytes: 150 });
  const live = new AbortController();
  const first = await a.enter(live.signal);
  t.deepEqual(a.load, { active: 1, waiting: 0 });
  const second = a.enter(live.signal);
  t.deepEqual(a.load, { active: 1, waiting: 1 });
  const e = await t.throwsAsync(a.enter(live.signal), { instanceOf: HttpError });
  t.is(e!.status, 503);
  first.reserve(80, "ct");
  t.throws(() => first.reserve(30, "pred"), { message: /pred decodes to 30 bytes.*\(80 bytes\).*100-byte limit per request/ });
  first.release();
  first.release(); // once only
  const t2 = await second;
  t.deepEqual(a.load, { active: 1, waiting: 0 });
  t2.reserve(100, "gt");
  t.is(a.inflightBytes, 100);
  t2.release();
  t.is(a.inflightBytes, 0);
  t.deepEqual(a.load, { active: 0, waiting: 0 });

  // the budget over requests: two slots, 150 bytes in all
  const b = new Admission({ concurrency: 2, queue: 0, maxRequestBytes: 100, maxInflightBytes: 150 });
  const x = await b.enter(live.signal),
    y = await b.enter(live.signal);
  x.reserve(100, "gt");
  const busy = t.throws(() => y.reserve(60, "ct"), { instanceOf: HttpError });
  t.is((busy as HttpError).status, 503);
  y.reserve(50, "ct");
  x.release();
  y.release();
  t.is(b.inflightBytes, 0);

  // a waiting request whose client leaves is dropped from the queue
  const c = new Admission({ concurrency: 1, queue: 2, maxRequestBytes: 1, maxInflightBytes: 1 });
  const held = await c.enter(live.signal);
  const leave = new AbortController();
  const waiting = c.enter(leave.signal);
  t.is(c.load.waiting, 1);
  leave.abort(new Error("gone"));
  await t.throwsAsync(waiting, { message: "gone" });
  t.is(c.load.waiting, 0);
  held.release();
  t.deepEqual(c.load, { active: 0, waiting: 0 });
});

/**
 * A raw HTTP request that declares a 100 000-byte body and sends 10 bytes (then one a 100 ms with
 * `trickle`): what the client gets back and when its socket closed.
 */
async function slowClient(url: string, multipart: boolean, trickle: boolean) {
  const net = await import("node:net");
  const { port } = new URL(url);
  const t0 = performance.now();
  return new Promise<{ answer: string; closedMs: number }>((resolve, reject) => {
    let answer = "";
    let iv: NodeJS.Timeout | undefined;
    const s = net.connect(Number(port), "127.0.0.1", () => {
      const type = multipart ? "multipart/form-data; boundary=XX" : "application/octet-stream";
      const start = multipart ? '--XX\r\nContent-Disposition: form-data; name="labels"; filename="a"\r\n\r\n' : "";
      s.write(
        `POST /v1/components HTTP/1.1\r\nHost: x\r\nContent-Type: ${type}\r\nContent-Length: 100000\r\n\r\n${start}${"x".repeat(10)}`,
      );
      if (trickle) iv = setInterval(() => s.writable && s.write("x"), 100);
    });
    s.on("data", (d) => (answer += d.toString()));
    s.on("error", reject);
    s.on("close", () => {
      clearInterval(iv);
      resolve({ answer, closedMs: performance.now() - t0 });
    });
    setTimeout(() => s.destroy(), 20_000);
  });
}

test("a body that stops coming is given up after bodyIdleMs (408, connection closed), and one that trickles past the job's time limit gets its 503; the slot comes back either way", async (t) => {
  // (margins for a loaded machine: the trickle is a byte a 100 ms, the idle limit 15 times that)
  const s = await start({ modelDir, bodyIdleMs: 1500, jobTimeoutMs: 3000, queue: 0 });
  try {
    for (const multipart of [false, true]) {
      const idle = await slowClient(s.url, multipart, false);
      t.regex(idle.answer, /^HTTP\/1\.1 408 /, `${multipart ? "multipart" : "octet-stream"}: ${idle.answer}`);
      t.regex(idle.answer, /connection: close/i);
      t.regex(idle.answer, /"error":"body_timeout","message":"no body bytes came for 1500 ms/);
      t.true(idle.closedMs < 10_000, `closed after ${idle.closedMs.toFixed(0)} ms`);
      t.like(await (await fetch(`${s.url}/v1/health`)).json(), { active: 0, waiting: 0 });
      // (before: the socket was destroyed at the time limit, no answer, the slot held until then)
      const slow = await slowClient(s.url, multipart, true);
      t.regex(slow.answer, /^HTTP\/1\.1 503 /, `${multipart ? "multipart" : "octet-stream"}: ${slow.answer}`);
      t.regex(slow.answer, /"error":"timeout"/);
      t.like(await (await fetch(`${s.url}/v1/health`)).json(), { active: 0, waiting: 0 });
    }
  } finally {
    await s.close();
  }
});

test("multipart files are counted as their bytes come: a second file past the limit is refused while it is still arriving", async (t) => {
  // gt whole (3000 bytes), then pred's first 2000 bytes, then silence: the
  // limit (4096) is passed mid-file, so the 413 cannot wait for that file's end (which never
  // comes; before, the files were counted only once each was whole: here a 408 after 20 s)
  const s = await start({ modelDir, maxBodyBytes: 4096, bodyIdleMs: 20_000 });
  try {
    const net = await import("node:net");
    const t0 = performance.now();
    const answer = await new Promise<string>((resolve, reject) => {
      let got = "";
      const sock = net.connect(Number(new URL(s.url).port), "127.0.0.1", () => {
        const part = (name: string) => `--XX\r\nContent-Disposition: form-data; name="${name}"; filename="${name}"\r\n\r\n`;
        // (chunked: a content-length over the limit is refused before any byte is read)
        const body = part("gt") + "g".repeat(3000) + "\r\n" + part("pred") + "p".repeat(2000);
        sock.write(
          "POST /v1/evaluate HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XX\r\nTransfer-Encoding: chunked\r\n\r\n" +
            `${body.length.toString(16)}\r\n${body}\r\n`,
        );
      });
      sock.on("data", (d) => {
        got += d.toString();
        if (got.includes("\r\n\r\n{")) resolve(got);
      });
      sock.on("error", reject);
      sock.on("close", () => resolve(got));
      setTimeout(() => sock.destroy(), 30_000);
    });
    t.regex(answer, /^HTTP\/1\.1 413 /, answer);
    t.regex(answer, /"error":"too_large","message":"the files are more than 4096 bytes together/);
    t.true(performance.now() - t0 < 10_000, `answered after ${(performance.now() - t0).toFixed(0)} ms`);
  } finally {
    await s.close();
  }
});
