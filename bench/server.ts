/**
 * The REST service under load (autocannon, loopback only, bounded): a mix of health checks,
 * component requests with a small label NIfTI and malformed bodies; p50/p99 latency, throughput,
 * errors, and the server's memory before and after 200 requests.
 */
import autocannon from "autocannon";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer, volumeFromArray, writeNifti } from "../dist/index.js";
import { fmt } from "./lib.js";

export async function benchServer(): Promise<string[]> {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-load-"));
  const d = new Uint8Array(16 * 64 * 64);
  for (let i = 0; i < d.length; i += 97) d[i] = 1 + (i % 5);
  await writeNifti(join(dir, "l.nii.gz"), volumeFromArray(d, [16, 64, 64], [5, 0.5, 0.5]));
  const good = readFileSync(join(dir, "l.nii.gz"));
  const app = await createServer({ modelDir: dir, logger: false, queue: 64 });
  await app.listen({ host: "127.0.0.1", port: 0 });
  const url = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
  const octet = { "content-type": "application/octet-stream" };
  const requests = [
    { method: "GET" as const, path: "/v1/health" },
    { method: "POST" as const, path: "/v1/components", headers: octet, body: good },
    { method: "POST" as const, path: "/v1/components", headers: octet, body: Buffer.from("garbage".repeat(100)) },
    { method: "POST" as const, path: "/v1/segment?model=../../etc/passwd", headers: octet, body: good },
  ];
  const run = (amount: number) =>
    new Promise<autocannon.Result>((res, rej) =>
      autocannon({ url, connections: 4, amount, requests, timeout: 30 }, (e, r) => (e ? rej(e) : res(r))),
    );
  await run(40); // warm-up
  const rss = async () => {
    (globalThis as { gc?: () => void }).gc?.();
    await new Promise((res) => setTimeout(res, 100));
    return process.memoryUsage().rss / 2 ** 20;
  };
  const mem = [await rss()];
  let r!: autocannon.Result;
  for (let round = 0; round < 3; round++) {
    r = await run(200);
    mem.push(await rss());
  }
  await app.close();
  const codes = `2xx ${r["2xx"]}, 4xx ${r["4xx"]}, 5xx ${r["5xx"]}, errors ${r.errors}, timeouts ${r.timeouts}`;
  return [
    "REST service, 3 rounds of 200 requests over 4 connections: health, components on a 16×64×64 label volume, malformed NIfTI, a path in `model` (expected 4xx); figures of the last round",
    "| p50 ms | p99 ms | requests/s | responses | RSS before and after each round, MB |",
    "| --- | --- | --- | --- | --- |",
    `| ${fmt(r.latency.p50)} | ${fmt(r.latency.p99)} | ${fmt(r.requests.average, 0)} | ${codes} | ${mem.map((m) => fmt(m, 0)).join(" → ")} |`,
  ];
}
