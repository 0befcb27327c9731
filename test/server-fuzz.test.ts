// Issue 18 #8: a bounded REST fuzzer. A fixed seed and a fixed number of cases (BHSD_FUZZ_CASES
// for a longer run, BHSD_FUZZ_SEED for another seed) of malformed JSON, random and mutated NIfTI bodies, broken multipart, wrong
// query types, odd paths, huge headers and broken HTTP, against a real server on 127.0.0.1. Every
// answer must be the service's `{ error, message }` with a 4xx (or 503 busy/timeout) — never a 500,
// never fastify's own shape — except a mutated NIfTI that is still valid, which may answer 200;
// and /v1/health must stay prompt throughout.
import test from "ava";
import { connect } from "node:net";
import { gunzipSync } from "node:zlib";
import { rngFrom } from "./fuzz-rng.js";
import { healthBaseline, healthMs, modelFolder, nifti, start } from "./server-helpers.js";

const CASES = Number(process.env.BHSD_FUZZ_CASES ?? 160);
const SEED = Number(process.env.BHSD_FUZZ_SEED ?? 0x18b5d);

/** The fuzzers' shared mulberry32 (test/fuzz-rng.ts), with random bytes. */
function prng(seed: number) {
  const r = rngFrom(seed);
  const bytes = (n: number) => Uint8Array.from({ length: n }, () => r.int(256));
  return { next: r.next, int: r.int, pick: r.pick, bytes };
}

interface Answer {
  status: number;
  body: string;
  contentType: string;
}

/** Sends raw bytes over a fresh connection; the status line and body of the answer (connection: close). */
function raw(port: number, request: Buffer | string, timeoutMs = 10_000): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, "127.0.0.1");
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => (sock.destroy(), reject(new Error("raw request timed out"))), timeoutMs);
    sock.on("data", (d) => chunks.push(d));
    sock.on("error", () => {}); // a reset after the answer
    sock.on("close", () => {
      clearTimeout(timer);
      const text = Buffer.concat(chunks).toString("latin1");
      const m = /^HTTP\/1\.1 (\d{3})/.exec(text);
      const split = text.indexOf("\r\n\r\n");
      const head = split >= 0 ? text.slice(0, split) : text;
      let body = split >= 0 ? text.slice(split + 4) : "";
      if (/transfer-encoding: chunked/i.test(head)) body = body.replace(/^[0-9a-f]+\r\n|\r\n[0-9a-f]+\r\n|\r\n0\r\n\r\n$/gi, "");
      resolve({ status: m ? Number(m[1]) : 0, body, contentType: /content-type: ([^\r\n]*)/i.exec(head)?.[1] ?? "" });
    });
    sock.write(request);
  });
}

async function viaFetch(url: string, init: RequestInit): Promise<Answer> {
  const r = await fetch(url, { ...init, signal: AbortSignal.timeout(20_000) });
  return { status: r.status, body: await r.text(), contentType: r.headers.get("content-type") ?? "" };
}

test("REST fuzz: every answer is the service's 4xx/503 shape, no 500, health prompt", async (t) => {
  t.timeout(Math.max(60_000, CASES * 1_000));
  const modelDir = modelFolder();
  const s = await start({
    modelDir,
    maxBodyBytes: 2 ** 20,
    maxVoxels: 2 ** 20,
    jobTimeoutMs: 10_000,
    concurrency: 1,
    queue: 16,
    maxComponents: 5_000,
  });
  const port = Number(new URL(s.url).port);
  const rng = prng(SEED);
  const labels = nifti(
    Uint8Array.from({ length: 16 * 16 * 8 }, (_, i) => (i % 7 === 0 ? 1 + (i % 3) : 0)),
    [16, 16, 8],
    "uint8",
    [1, 1, 1],
    false,
  );
  const labelsGz = nifti(new Uint8Array(labels.subarray(352)), [16, 16, 8], "uint8");
  const ct = nifti(
    Int16Array.from({ length: 32 * 32 * 4 }, (_, i) => ((i * 37) % 200) - 60),
    [32, 32, 4],
    "int16",
    [0.5, 0.5, 5],
    false,
  );
  const routes = ["/v1/segment", "/v1/components", "/v1/evaluate"];
  const junkText = () =>
    Array.from({ length: rng.int(40) }, () =>
      rng.pick(["{", "}", "[", "]", '"', ":", ",", "a", "1", "null", "\\", "\u0000", "é", " "]),
    ).join("");
  const mutate = (b: Buffer): Buffer => {
    const c = Buffer.from(b);
    const n = 1 + rng.int(6);
    for (let i = 0; i < n; i++) c[rng.int(Math.min(c.length, rng.next() < 0.8 ? 352 : c.length))] = rng.int(256);
    return rng.next() < 0.3 ? c.subarray(0, rng.int(c.length)) : c;
  };
  const multipart = (boundary: string, parts: { name: string; body: Uint8Array | string }[], end = true) => {
    const out: Buffer[] = [];
    for (const p of parts) {
      out.push(
        Buffer.from(
          `--${boundary}\r\nContent-Disposition: form-data; name="${p.name}"; filename="f.nii"\r\nContent-Type: application/octet-stream\r\n\r\n`,
        ),
      );
      out.push(Buffer.from(p.body as Uint8Array));
      out.push(Buffer.from("\r\n"));
    }
    if (end) out.push(Buffer.from(`--${boundary}--\r\n`));
    return Buffer.concat(out);
  };

  type Case = { kind: string; maySucceed?: boolean; run: () => Promise<Answer> };
  const gens: (() => Case)[] = [
    () => ({
      kind: "json",
      run: () => viaFetch(s.url + rng.pick(routes), { method: "POST", body: junkText(), headers: { "content-type": "application/json" } }),
    }),
    () => ({
      kind: "random bytes",
      run: () =>
        viaFetch(s.url + rng.pick(["/v1/segment", "/v1/components"]), {
          method: "POST",
          body: rng.bytes(rng.int(2000)),
          headers: { "content-type": rng.pick(["application/octet-stream", "application/gzip"]) },
        }),
    }),
    () => ({
      kind: "mutated nifti",
      maySucceed: true,
      run: () =>
        viaFetch(`${s.url}/v1/components?connectivity=${rng.pick([6, 18, 26])}`, {
          method: "POST",
          body: mutate(rng.next() < 0.5 ? labels : labelsGz),
          headers: { "content-type": "application/octet-stream" },
        }),
    }),
    () => ({
      kind: "mutated evaluate",
      maySucceed: true,
      run: () => {
        const fd = new FormData();
        fd.append("gt", new Blob([rng.next() < 0.5 ? mutate(labels) : labels]), "gt.nii");
        fd.append("pred", new Blob([mutate(rng.next() < 0.5 ? labels : labelsGz)]), "pred.nii");
        return viaFetch(`${s.url}/v1/evaluate`, { method: "POST", body: fd });
      },
    }),
    () => ({
      kind: "mutated segment",
      maySucceed: true,
      run: () =>
        viaFetch(`${s.url}/v1/segment?model=tiny`, {
          method: "POST",
          body: mutate(ct),
          headers: { "content-type": "application/octet-stream" },
        }),
    }),
    () => ({
      kind: "gzip bomb header",
      run: () => {
        const h = Buffer.from(gunzipSync(labelsGz).subarray(0, 352));
        h.writeInt16LE(rng.pick([2000, 32767, 30000]), 42);
        h.writeInt16LE(rng.pick([2000, 32767]), 44);
        return viaFetch(`${s.url}/v1/components`, { method: "POST", body: h, headers: { "content-type": "application/octet-stream" } });
      },
    }),
    () => ({
      kind: "multipart",
      run: () => {
        const boundary = rng.pick(["abc", "----x" + rng.int(1e6), "", "a b", '="q"']);
        const parts = Array.from({ length: rng.int(4) }, () => ({
          name: rng.pick(["gt", "pred", "ct", "labels", "x", "", 'a"b']),
          body: rng.next() < 0.5 ? rng.bytes(rng.int(800)) : mutate(labels),
        }));
        let body = multipart(boundary || "zz", parts, rng.next() < 0.6);
        if (rng.next() < 0.4) body = body.subarray(0, rng.int(body.length + 1));
        const type = rng.pick([
          `multipart/form-data; boundary=${boundary}`,
          "multipart/form-data",
          "multipart/form-data; boundary=",
          `multipart/mixed; boundary=${boundary}`,
        ]);
        return viaFetch(s.url + rng.pick(routes), { method: "POST", body, headers: { "content-type": type } });
      },
    }),
    () => ({
      kind: "query types",
      run: () => {
        const q = rng.pick([
          `connectivity=${rng.pick(["abc", "7", "-6", "6.5", "1e99", "", "[]", "%00"])}`,
          `nsdToleranceMm=${rng.pick(["x", "-1", "NaN", "Infinity", "1,2"])}`,
          `tta=${rng.pick(["yes", "2", "TRUE!", "[]"])}&model=tiny`,
          `cleanupMinMl=${rng.pick(["-0.1", "abc", "1e400"])}&model=tiny`,
          `model=${encodeURIComponent(rng.pick(["../x", "/etc/passwd", "..", "a/b", "x".repeat(300), "\u0000", "nosuch"]))}`,
          `unknown=${rng.int(100)}`,
        ]);
        return viaFetch(`${s.url}${rng.pick(routes)}?${q}`, {
          method: "POST",
          body: labels,
          headers: { "content-type": "application/octet-stream" },
        });
      },
    }),
    () => ({
      kind: "paths and methods",
      run: () => {
        const method = rng.pick(["GET", "PUT", "DELETE", "PATCH", "POST"]);
        const body = method !== "GET" && rng.next() < 0.5 ? { body: "x", headers: { "content-type": "text/plain" } } : {};
        return viaFetch(
          s.url +
            rng.pick([
              "/",
              "/v1",
              "/v1/",
              "/v2/segment",
              "/v1/results/x/labels.nii.gz",
              `/v1/results/${"0".repeat(32)}/labels.nii.gz`,
              "/v1/segment/..%2f..%2fetc",
              "/%zz",
              "/v1/health/x",
            ]),
          { method, ...body },
        );
      },
    }),
    () => ({
      kind: "huge headers",
      run: () =>
        raw(port, `GET /v1/info HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20_000 + rng.int(40_000))}\r\nConnection: close\r\n\r\n`),
    }),
    () => ({
      kind: "broken http",
      run: () =>
        raw(
          port,
          rng.pick([
            "GARBAGE\r\n\r\n",
            "POST /v1/components HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\nConnection: close\r\n\r\n",
            "POST /v1/components HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\nzz\r\nxx\r\n0\r\n\r\n",
            "POST /v1/components HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
            "GET /v1/info HTTP/9.9\r\nHost: x\r\nConnection: close\r\n\r\n",
            "POST /v1/components HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd",
          ]),
        ),
    }),
  ];

  const base = await healthBaseline(s.url);
  const bound = Math.min(1500, Math.max(300, 10 * base));
  const seen: Record<string, Record<number, number>> = {};
  let worstHealth = 0;
  try {
    for (let i = 0; i < CASES; i++) {
      const c = rng.pick(gens)();
      const a = await c.run();
      (seen[c.kind] ??= {})[a.status] = ((seen[c.kind] ??= {})[a.status] ?? 0) + 1;
      const where = `case ${i} (${c.kind}): ${a.status} ${a.body.slice(0, 200)}`;
      if (a.status === 200 && c.maySucceed) {
        t.notThrows(() => JSON.parse(a.body), where);
        continue;
      }
      if (!(a.status >= 400 && a.status < 500) && !(a.status === 503)) {
        t.fail(where);
        continue;
      }
      let b: unknown;
      try {
        b = JSON.parse(a.body);
      } catch {
        t.fail(`not JSON: ${where}`);
        continue;
      }
      const ok =
        typeof b === "object" &&
        b !== null &&
        Object.keys(b).sort().join() === "error,message" &&
        typeof (b as { error: unknown }).error === "string" &&
        typeof (b as { message: unknown }).message === "string";
      if (!ok) t.fail(`not { error, message }: ${where}`);
      if (!/^application\/json/.test(a.contentType)) t.fail(`content-type ${a.contentType}: ${where}`);
      if (i % 8 === 0) worstHealth = Math.max(worstHealth, await healthMs(s.url));
    }
    t.log(JSON.stringify(seen));
    t.true(worstHealth < bound, `slowest health ${worstHealth.toFixed(0)} ms (idle ${base.toFixed(0)} ms)`);
    t.deepEqual(await (await fetch(`${s.url}/v1/health`)).json(), { status: "ok", active: 0, waiting: 0 });
    // the kinds the seed reached, so that a change of seed or generators cannot silently test less
    t.true(Object.keys(seen).length >= Math.min(gens.length, Math.floor(CASES / 10)), Object.keys(seen).join(", "));
  } finally {
    await s.close();
  }
});
