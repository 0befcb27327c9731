/**
 * `bhsd serve --redis URL`: the REST service as a front of the shared queue. It runs no model:
 * a segmentation request is stored in the shared folder and enqueued, any `bhsd worker` takes
 * it, and any number of these API processes answer for any job (status and results by id).
 *
 *   POST /v1/jobs/segment?model=NAME&tta=BOOL   body: the CT (NIfTI, application/octet-stream)
 *        → 202 { id, state, status, labels }     (the same CT and model again → the same id)
 *   GET  /v1/jobs/:id                             → { id, state, progress, attempts, error, result }
 *   GET  /v1/jobs/:id/labels                      → the label NIfTI (gzip) once completed
 *   GET  /v1/health                               → { status, queue: counts by state, workers }
 *
 * Errors are { error, message } as in the in-process service. The labels never pass through
 * Redis: the request's CT and the labels are files in `sharedDir`, which every worker must reach
 * at the same path.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { constants, existsSync } from "node:fs";
import { mkdir, utimes, writeFile } from "node:fs/promises";
import { basename, join, resolve } from "node:path";
import Fastify, { type FastifyInstance } from "fastify";
import { readNiftiHeader } from "../io/nifti.js";
import { openRegularFile, replaceFile } from "../io/small-file.js";
import { openQueue } from "./batch.js";
import { findNamedModel } from "../model/named.js";
import { restJobsKey, sweep, waitForSweep } from "./retention.js";
import { decodeNumbers, DEFAULT_QUEUE, defaultModelDir, modelHash, segmentJobId, type JobResult, type SegmentJobData } from "./common.js";

export interface QueueServeOptions {
  redis: string;
  queue?: string;
  host?: string;
  port?: number;
  token?: string;
  /** Folder shared with the workers: inputs/ (the CTs received) and results/ (labels). */
  sharedDir: string;
  /** Where this process finds the models (to check a name and fingerprint it). */
  modelDir?: string;
  maxBodyBytes?: number;
  /** Uploads read at once (default 4); more are answered 503 busy before their body is read. */
  maxUploads?: number;
  attempts?: number;
  backoffMs?: number;
  /**
   * A finished job this front submitted is removed with its labels this long after it finished or
   * its CT was last posted again (default 900 s, as the in-process service's results).
   */
  resultTtlMs?: number;
  /** A received CT is removed once no unfinished job names it and it is this old (default 10 min or the TTL). */
  inputGraceMs?: number;
  /** How often the shared folder is swept (default a quarter of the TTL, at most 60 s). */
  sweepIntervalMs?: number;
}

/** A connection silent this long while a request comes in is closed. */
const IDLE_MS = 30_000;
const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;
const ID = /^seg-[0-9a-f]{40}$/;
const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/**
 * A job's error as this front shows it to clients: paths in the shared folder relative to it, any
 * other absolute path (a worker's model folder, its own files) cut to its last part. The worker's
 * name stays (the status's `worker` field shows it too).
 */
export function publicError(message: string, shared: string): string {
  const root = shared.replace(/\/+$/, "");
  const esc = (x: string) => x.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  // a path starts after a start, a space or punctuation (not inside a word, a URL's host or a relative path)
  const before = "(^|[^\\w./:…-])";
  let out = message.replace(/file:\/\/(\/[^\s"'`<>()[\]{},;]+)/g, (_m, p: string) => `file://…/${basename(p)}`);
  if (root) out = out.replace(new RegExp(`${before}${esc(root)}/`, "g"), "$1");
  out = out.replace(new RegExp(`${before}(/[^\\s"'\`<>()[\\]{},;]+)`, "g"), (_m, pre: string, p: string) => {
    const tail = /[.:]+$/.exec(p)?.[0] ?? "";
    return `${pre}…/${basename(p.slice(0, p.length - tail.length))}${tail}`;
  });
  return out.slice(0, 2000);
}

export async function serveQueue(o: QueueServeOptions): Promise<FastifyInstance> {
  const host = o.host ?? "127.0.0.1";
  const token = o.token ?? process.env.BHSD_TOKEN;
  if (!LOOPBACK.test(host) && !token) throw new Error(`serving on ${host} needs a bearer token (--token or BHSD_TOKEN)`);
  const shared = resolve(o.sharedDir);
  const inputs = join(shared, "inputs"),
    results = join(shared, "results");
  await mkdir(inputs, { recursive: true });
  await mkdir(results, { recursive: true });
  const modelDir = defaultModelDir(o.modelDir);
  const q = openQueue({ redis: o.redis, queue: o.queue ?? DEFAULT_QUEUE });
  await q.queue.waitUntilReady();
  const hashes = new Map<string, Promise<string>>();

  const ttlMs = o.resultTtlMs ?? 900_000;
  const graceMs = o.inputGraceMs ?? Math.min(ttlMs, 600_000);
  const everyMs = o.sweepIntervalMs ?? Math.min(Math.max(ttlMs / 4, 1000), 60_000);
  for (const [k, v] of [
    ["resultTtlMs", ttlMs],
    ["inputGraceMs", graceMs],
    ["sweepIntervalMs", everyMs],
  ] as const)
    if (!Number.isFinite(v) || v < 1 || v > 2 ** 31 - 1) throw new RangeError(`${k} must be between 1 and 2^31-1 ms, got ${String(v)}`);
  let sweeping: Promise<unknown> = Promise.resolve();
  let sweepTimer: NodeJS.Timeout | undefined;
  const nextSweep = () => {
    sweepTimer = setTimeout(() => {
      // (a failed sweep, Redis away for a moment, is tried again at the next)
      sweeping = sweep(q.queue, { queue: q.name, redis: q.connection, inputs, results, ttlMs, graceMs }).catch(() => {});
      void sweeping.then(() => sweepTimer && nextSweep());
    }, everyMs);
    sweepTimer.unref();
  };
  nextSweep();

  // Uploads are buffered whole (a CT, then a file in inputs/): at most maxUploads at once, and a
  // connection silent for 30 s is closed (this front never holds a request long without bytes
  // moving: the work is the workers'), so slow or stalled senders cannot pin memory or slots.
  const maxUploads = o.maxUploads ?? 4;
  if (!Number.isInteger(maxUploads) || maxUploads < 1)
    throw new RangeError(`maxUploads must be a whole number ≥ 1, got ${String(maxUploads)}`);
  let uploads = 0;
  const app = Fastify({ bodyLimit: o.maxBodyBytes ?? 512 * 2 ** 20, logger: false, connectionTimeout: IDLE_MS });
  app.addContentTypeParser(
    ["application/octet-stream", "application/gzip", "application/x-gzip"],
    { parseAs: "buffer" },
    (_req, body, done) => done(null, body),
  );
  app.addHook("onClose", async () => {
    clearTimeout(sweepTimer);
    sweepTimer = undefined;
    await sweeping;
    await q.close();
  });
  const want = token ? createHash("sha256").update(token).digest() : null;
  app.addHook("onRequest", async (req) => {
    if (!want || req.url === "/v1/health") return; // health open, as in the in-process service
    const m = /^(\S+)\s+(.*)$/.exec(req.headers.authorization ?? "");
    const got = createHash("sha256")
      .update(m && m[1]!.toLowerCase() === "bearer" ? m[2]!.trim() : "")
      .digest();
    if (!timingSafeEqual(got, want)) throw new HttpError(401, "unauthorized", "a valid bearer token is required (Authorization: Bearer …)");
  });
  // (after the token check: an unauthorised request never takes an upload slot)
  app.addHook("onRequest", async (req, reply) => {
    if (req.method !== "POST") return;
    if (uploads >= maxUploads) {
      reply.header("retry-after", "5").header("connection", "close");
      throw new HttpError(503, "busy", `${maxUploads} uploads are being received; try again shortly`);
    }
    // given back once: when the answer is done, or when the connection goes (a pipelined request's
    // answer, queued behind another, never emits its close if the client leaves first)
    uploads++;
    const socket = req.raw.socket;
    let held = true;
    const release = () => {
      // (once only: the socket's close emits the answer's close first, and a listener removed
      // while an emit loops over its copy still runs)
      if (!held) return;
      held = false;
      uploads--;
      reply.raw.off("close", release);
      socket.off("close", release);
    };
    reply.raw.once("close", release);
    socket.once("close", release);
    // the socket's idle timeout is for the upload; the answer's own work (a model's first
    // fingerprint, writing the CT into the shared folder) may be silent for longer
    // (a body nothing read ends only after the answer: then the re-arm below stands)
    req.raw.once("end", () => reply.raw.writableFinished || socket.setTimeout(0));
    reply.raw.once("finish", () => socket.destroyed || socket.setTimeout(IDLE_MS));
  });
  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, _req, reply) => {
    if (err instanceof HttpError) return reply.code(err.status).send({ error: err.code, message: err.message });
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    return reply.code(status).send({
      error: status === 500 ? "internal" : (err.code ?? "bad_request").toLowerCase(),
      message: status === 500 ? "the server could not complete the request" : err.message,
    });
  });
  app.setNotFoundHandler((req, reply) => reply.code(404).send({ error: "not_found", message: `no route ${req.method} ${req.url}` }));

  app.get("/v1/health", async () => {
    const [counts, workers] = await Promise.all([
      q.queue.getJobCounts("waiting", "active", "delayed", "completed", "failed", "prioritized", "paused"),
      q.queue.getWorkers(),
    ]);
    return { status: "ok", mode: "queue", queue: counts, workers: workers.length };
  });

  app.post("/v1/jobs/segment", async (req, reply) => {
    const query = req.query as { model?: string; tta?: string };
    const model = query.model ?? "demo";
    if (!MODEL_NAME.test(model) || model.includes(".."))
      throw new HttpError(400, "bad_model", "model must be a plain name (letters, digits, . _ -)");
    const found = findNamedModel(modelDir, model);
    if (!found) throw new HttpError(404, "no_such_model", `no model "${model}" on this service`);
    const file = found.path;
    if (query.tta !== undefined && !["true", "false"].includes(query.tta))
      throw new HttpError(400, "bad_request", "tta must be true or false");
    const mirror = query.tta === "true";
    const body = req.body;
    if (!Buffer.isBuffer(body) || body.length === 0)
      throw new HttpError(415, "unsupported_media_type", "send the CT as an application/octet-stream NIfTI body");
    try {
      await readNiftiHeader(new Uint8Array(body.buffer, body.byteOffset, body.byteLength));
    } catch (e) {
      throw new HttpError(400, "bad_nifti", (e as Error).message.split("\n")[0]!);
    }
    let mh = hashes.get(model);
    if (!mh) {
      hashes.set(model, (mh = modelHash(file)));
      // (a failed fingerprint is tried again by the next request, not kept)
      mh.catch(() => hashes.delete(model));
    }
    const mHash = await mh;
    const inputHash = createHash("sha256").update(body).digest("hex");
    const gz = body[0] === 0x1f && body[1] === 0x8b;
    const input = join(inputs, `${inputHash}${gz ? ".nii.gz" : ".nii"}`);
    const id = segmentJobId(inputHash, model, mHash, mirror);
    const data: SegmentJobData = {
      kind: "segment",
      case: inputHash.slice(0, 16),
      input,
      inputHash,
      model,
      modelHash: mHash,
      out: join(results, `${id}.nii.gz`),
      ...(mirror ? { mirror } : {}),
      batch: "rest",
    };
    const submit = async () => {
      // the CT written, or touched when there (a sweep removes a CT no job names only once it is old)
      const now = new Date();
      if (
        !existsSync(input) ||
        !(await utimes(input, now, now).then(
          () => true,
          () => false,
        ))
      ) {
        // (a fresh temporary nobody can guess, renamed into place: the shared folder is written by many)
        await replaceFile(input, (tmp) => writeFile(tmp, body, { flag: "wx" }));
      }
      // recorded as this front's (its lifetime counts from this POST too), then enqueued
      await q.connection.zadd(restJobsKey(q.name), "GT", Date.now(), id);
      const add = () =>
        q.queue.add("segment", data, {
          jobId: id,
          attempts: o.attempts ?? 3,
          backoff: { type: "exponential", delay: o.backoffMs ?? 5000 },
          removeOnComplete: false,
          removeOnFail: false,
        });
      let job = await add();
      let state = await job.getState();
      // (removed between the two calls: enqueued afresh)
      if (state === "unknown") state = await (job = await add()).getState();
      if (state === "failed") await job.retry("failed", { resetAttemptsMade: true, resetAttemptsStarted: true });
      return state;
    };
    let state = await submit();
    // a sweep that held the job or its CT meanwhile may have removed either: all done again after it
    for (let k = 0; k < 3 && (await waitForSweep(q.connection, q.name, [id, basename(input)])); k++) state = await submit();
    return reply
      .code(202)
      .send({ id, state: state === "failed" ? "waiting" : state, status: `/v1/jobs/${id}`, labels: `/v1/jobs/${id}/labels` });
  });

  async function getJob(id: string) {
    if (!ID.test(id)) throw new HttpError(400, "bad_id", "a job id is seg- and 40 hex digits");
    const job = await q.queue.getJob(id);
    if (!job) throw new HttpError(404, "no_such_job", `no job ${id}`);
    return job;
  }

  app.get("/v1/jobs/:id", async (req) => {
    const id = (req.params as { id: string }).id;
    let job = await getJob(id);
    const state = await job.getState();
    // read before its state, a job that finished in between has stale fields: read it again then
    // (a completed one without its result, a failed one an attempt behind)
    if (state === "completed" || state === "failed") job = await getJob(id);
    const r = state === "completed" && job.returnvalue ? decodeNumbers(job.returnvalue as JobResult) : null;
    return {
      id: job.id,
      state,
      progress: typeof job.progress === "object" ? job.progress : null,
      attempts: job.attemptsMade,
      error: state === "completed" || !job.failedReason ? null : publicError(job.failedReason, shared),
      worker: job.processedBy ?? null,
      result: r && { perClass: r.perClass, bleeds: r.bleeds, backend: r.backend, windows: r.windows, worker: r.worker, ms: r.ms },
    };
  });

  app.get("/v1/jobs/:id/labels", async (req, reply) => {
    const job = await getJob((req.params as { id: string }).id);
    const state = await job.getState();
    if (state !== "completed") throw new HttpError(409, "not_ready", `job ${job.id} is ${state}`);
    // the file the job was submitted to write (its result's path must be that one): for a job this
    // front submitted, results/<id>.nii.gz itself; for one a batch submitted (the same CT and model
    // are one job), its .nii.gz. A regular file, not itself a link: a worker's result naming another
    // path is never served (a record written into Redis by hand can still name a .nii.gz of its own).
    const data = job.data as Partial<SegmentJobData>;
    const out = data.out;
    const labels = (job.returnvalue as JobResult | undefined)?.labels;
    if (
      typeof out !== "string" ||
      labels !== out ||
      !/\.nii\.gz$/.test(out) ||
      (data.batch === "rest" && out !== join(results, `${job.id}.nii.gz`))
    )
      throw new HttpError(409, "not_ready", `job ${job.id} has no labels to serve`);
    const fh = (await openRegularFile(out, constants.O_NOFOLLOW).catch(() => null))?.fh;
    if (!fh) throw new HttpError(410, "gone", `the labels of job ${job.id} are no longer a file in the shared folder`);
    return reply
      .type("application/gzip")
      .header("content-disposition", `attachment; filename="${job.id}.nii.gz"`)
      .send(fh.createReadStream());
  });

  await app.listen({ host, port: o.port ?? 8080 });
  return app;
}
