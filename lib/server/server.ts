/**
 * The REST service (fastify). Routes under /v1: health, info, openapi.json, segment, evaluate,
 * components, and results/:id/labels.nii.gz. Bounded everywhere: body size, voxels per volume,
 * concurrent jobs with a bounded queue (503 + Retry-After when full), a timeout per job, results
 * that expire. Client faults answer 4xx `{ error, message }`; nothing a client sends can crash it.
 * Binds 127.0.0.1 by default; any other address needs a bearer token, checked in constant time on
 * every route but /v1/health. Models come only from the model folder, by name. NIfTI header text
 * (descrip, aux_file, intent_name) is never read into logs.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { existsSync, readdirSync } from "node:fs";
import { join, resolve } from "node:path";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import multipart from "@fastify/multipart";
import { backendInfo } from "../backends/index.js";
import { PACKAGE_ROOT } from "../backends/paths.js";
import { NiftiError, readNifti, readNiftiHeader } from "../io/nifti.js";
import { toJson } from "../json.js";
import { evaluate } from "../metrics/evaluate.js";
import { loadModel, type Model } from "../model/model.js";
import { segment } from "../model/segment.js";
import { componentStats, connectedComponents } from "../ops/components.js";
import type { Volume } from "../types.js";
import { VERSION } from "../version.js";
import { promisify } from "node:util";
import { gzip } from "node:zlib";
import { buildHeader } from "../io/nifti-header.js";
import { openapi } from "./openapi.js";

export interface ServeOptions {
  host?: string;
  port?: number;
  /** Bearer token; required when host is not a loopback address. Default BHSD_TOKEN. */
  token?: string;
  /** Folder of `<name>.onnx` models (with their sidecars). Default BHSD_MODEL_DIR or the package's models/. */
  modelDir?: string;
  /** Largest request body (bytes), default 512 MiB. */
  maxBodyBytes?: number;
  /** Largest volume (voxels), default 64 Mi. */
  maxVoxels?: number;
  /** Jobs run at once (default 1) and jobs waiting (default 4). */
  concurrency?: number;
  queue?: number;
  /** Time limit of one job (ms, default 10 min) and lifetime of a result (ms, default 15 min). */
  jobTimeoutMs?: number;
  resultTtlMs?: number;
  /** fastify's logger (default true; false in tests). */
  logger?: boolean;
}

class HttpError extends Error {
  constructor(readonly status: number, readonly code: string, message: string, readonly headers: Record<string, string> = {}) {
    super(message);
  }
}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;
const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** A queue of jobs: `concurrency` at a time, `max` waiting, the rest refused. */
class JobQueue {
  private active = 0;
  private waiting: (() => void)[] = [];
  constructor(private readonly concurrency: number, private readonly max: number) {}
  async run<T>(fn: () => Promise<T>, timeoutMs: number): Promise<T> {
    if (this.active >= this.concurrency) {
      if (this.waiting.length >= this.max) throw new HttpError(503, "busy", "all workers are busy and the queue is full; retry later", { "retry-after": "5" });
      await new Promise<void>((r) => this.waiting.push(r));
    }
    this.active++;
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        fn(),
        new Promise<never>((_, rej) => (timer = setTimeout(() => rej(new HttpError(503, "timeout", `the job took longer than ${timeoutMs} ms`, { "retry-after": "30" })), timeoutMs))),
      ]);
    } finally {
      clearTimeout(timer);
      this.active--;
      this.waiting.shift()?.();
    }
  }
  get load() {
    return { active: this.active, waiting: this.waiting.length };
  }
}

function tokenDigest(t: string): Buffer {
  return createHash("sha256").update(t).digest();
}

const gzipAsync = promisify(gzip);

/** Label volume → .nii.gz bytes (uint8, the CT's geometry), compressed off the event loop. */
async function niftiBytes(v: Volume<Uint8Array>): Promise<Buffer> {
  const header = buildHeader({ version: 1, dims: v.dims, dtype: "uint8", spacing: v.spacing, affine: v.affine, sclSlope: 0, sclInter: 0, qformCode: 1, sformCode: 1 });
  return gzipAsync(Buffer.concat([header, Buffer.from(v.data.buffer, v.data.byteOffset, v.data.byteLength)]), { level: 6 });
}

export async function createServer(options: ServeOptions = {}): Promise<FastifyInstance> {
  const host = options.host ?? "127.0.0.1";
  const token = options.token ?? process.env.BHSD_TOKEN;
  if (!LOOPBACK.test(host) && !token) throw new Error(`refusing to listen on ${host} without a token: pass --token or set BHSD_TOKEN (127.0.0.1 needs none)`);
  const modelDir = resolve(options.modelDir ?? process.env.BHSD_MODEL_DIR ?? join(PACKAGE_ROOT, "models"));
  const maxBody = options.maxBodyBytes ?? 512 * 2 ** 20;
  const maxVoxels = options.maxVoxels ?? 64 * 2 ** 20;
  const queue = new JobQueue(options.concurrency ?? 1, options.queue ?? 4);
  const jobTimeout = options.jobTimeoutMs ?? 10 * 60_000;
  const ttl = options.resultTtlMs ?? 15 * 60_000;
  const results = new Map<string, { bytes: Buffer; expires: number }>();
  const models = new Map<string, Model>();
  const want = token ? tokenDigest(token) : undefined;

  const app = Fastify({
    logger: options.logger ?? true,
    bodyLimit: maxBody,
  });
  await app.register(multipart, { limits: { fileSize: maxBody, files: 2, fields: 10 } });
  app.addContentTypeParser(["application/octet-stream", "application/gzip", "application/x-gzip"], { parseAs: "buffer", bodyLimit: maxBody }, (_req, body, done) => done(null, body));

  const sweep = setInterval(() => {
    const now = Date.now();
    for (const [k, v] of results) if (v.expires < now) results.delete(k);
  }, 30_000);
  sweep.unref();
  app.addHook("onClose", async () => clearInterval(sweep));

  app.addHook("onRequest", async (req) => {
    if (!want || req.url === "/v1/health") return;
    const h = req.headers.authorization ?? "";
    const got = tokenDigest(h.startsWith("Bearer ") ? h.slice(7) : "");
    if (!timingSafeEqual(got, want)) throw new HttpError(401, "unauthorized", "a valid bearer token is required (Authorization: Bearer …)");
  });

  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, _req, reply) => {
    if (err instanceof HttpError) return reply.code(err.status).headers(err.headers).send({ error: err.code, message: err.message });
    if (err instanceof NiftiError) return reply.code(400).send({ error: "bad_nifti", message: err.message });
    if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500) return reply.code(err.statusCode).send({ error: err.code ?? "bad_request", message: err.message });
    if (err instanceof TypeError || err instanceof RangeError) return reply.code(400).send({ error: "bad_request", message: err.message });
    app.log.error({ err: { message: err.message } }, "request failed");
    return reply.code(500).send({ error: "internal", message: "the server could not complete the request" });
  });

  const listModels = () => (existsSync(modelDir) ? readdirSync(modelDir).filter((f) => f.endsWith(".onnx")).map((f) => f.slice(0, -5)).sort() : []);

  async function getModel(name: unknown): Promise<Model> {
    const available = listModels();
    let n = name;
    if (n === undefined || n === "") {
      if (available.length === 1) n = available[0];
      else if (available.includes("default")) n = "default";
      else throw new HttpError(400, "model_required", `name a model with ?model= (available: ${available.join(", ") || "none"})`);
    }
    if (typeof n !== "string" || !MODEL_NAME.test(n) || n.includes("..")) throw new HttpError(400, "bad_model", "model must be a plain name from the server's model folder (letters, digits, . _ -)");
    if (!available.includes(n)) throw new HttpError(404, "no_such_model", `no model "${n}" (available: ${available.join(", ") || "none"})`);
    let m = models.get(n);
    if (!m) {
      m = await loadModel(join(modelDir, `${n}.onnx`));
      models.set(n, m);
    }
    return m;
  }

  /** The NIfTI of a request: an octet-stream body, or the multipart field `field`. */
  async function bodyFile(req: FastifyRequest, field: string): Promise<Buffer> {
    if (req.isMultipart()) {
      for await (const part of req.parts()) {
        if (part.type === "file" && part.fieldname === field) return await part.toBuffer();
        if (part.type === "file") await part.toBuffer();
      }
      throw new HttpError(400, "missing_field", `multipart field "${field}" is missing`);
    }
    if (!Buffer.isBuffer(req.body)) throw new HttpError(415, "unsupported_media_type", "send the NIfTI as application/octet-stream or multipart/form-data");
    return req.body;
  }

  async function multipartFiles(req: FastifyRequest, fields: string[]): Promise<Record<string, Buffer>> {
    if (!req.isMultipart()) throw new HttpError(415, "unsupported_media_type", `send multipart/form-data with fields ${fields.join(", ")}`);
    const out: Record<string, Buffer> = {};
    for await (const part of req.parts()) if (part.type === "file") out[part.fieldname] = await part.toBuffer();
    for (const f of fields) if (!out[f]) throw new HttpError(400, "missing_field", `multipart field "${f}" is missing`);
    return out;
  }

  async function volumeOf(bytes: Buffer, name: string): Promise<Volume> {
    const h = await readNiftiHeader(bytes, { name });
    const n = h.dims[0] * h.dims[1] * h.dims[2];
    if (n > maxVoxels) throw new HttpError(413, "too_large", `${name} has ${n} voxels; this server takes at most ${maxVoxels}`);
    return readNifti(bytes, { name });
  }

  const number = (v: unknown, name: string, min: number): number | undefined => {
    if (v === undefined || v === "") return undefined;
    const x = Number(v);
    if (!Number.isFinite(x) || x < min) throw new HttpError(400, "bad_query", `${name} must be a number >= ${min}`);
    return x;
  };

  app.get("/v1/health", async () => ({ status: "ok", ...queue.load }));
  app.get("/v1/info", async () => ({ version: VERSION, node: process.version, backends: backendInfo(), models: listModels(), limits: { maxBodyBytes: maxBody, maxVoxels, jobTimeoutMs: jobTimeout, resultTtlMs: ttl } }));
  app.get("/v1/openapi.json", async () => openapi(VERSION));

  app.post("/v1/segment", async (req: FastifyRequest<{ Querystring: Record<string, string> }>, reply: FastifyReply) => {
    const q = req.query ?? {};
    const model = await getModel(q.model);
    const cleanupMinMl = number(q.cleanupMinMl, "cleanupMinMl", 0);
    const tta = q.tta === "1" || q.tta === "true";
    const ct = await volumeOf(await bodyFile(req, "ct"), "ct");
    const { labels, report } = await queue.run(() => segment(ct, model, { mirror: tta, ...(cleanupMinMl !== undefined ? { cleanup: { minVolumeMl: cleanupMinMl } } : {}) }), jobTimeout);
    const id = randomBytes(16).toString("hex");
    results.set(id, { bytes: await niftiBytes(labels), expires: Date.now() + ttl });
    reply.header("content-type", "application/json");
    return toJson({ ...report, labels: `/v1/results/${id}/labels.nii.gz`, expiresInS: Math.round(ttl / 1000) });
  });

  app.get("/v1/results/:id/labels.nii.gz", async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
    const r = /^[0-9a-f]{32}$/.test(req.params.id) ? results.get(req.params.id) : undefined;
    if (!r || r.expires < Date.now()) throw new HttpError(404, "not_found", "no such result (results expire)");
    return reply.header("content-type", "application/gzip").send(r.bytes);
  });

  app.post("/v1/evaluate", async (req: FastifyRequest<{ Querystring: Record<string, string> }>, reply) => {
    const files = await multipartFiles(req, ["gt", "pred"]);
    const gt = await volumeOf(files.gt!, "gt"), pred = await volumeOf(files.pred!, "pred");
    const tau = number(req.query?.nsdToleranceMm, "nsdToleranceMm", 0);
    const m = await queue.run(() => evaluate(gt, pred, tau !== undefined ? { nsdToleranceMm: tau } : {}), jobTimeout);
    reply.header("content-type", "application/json");
    return toJson(m);
  });

  app.post("/v1/components", async (req: FastifyRequest<{ Querystring: Record<string, string> }>, reply) => {
    const conn = number(req.query?.connectivity, "connectivity", 6) ?? 26;
    if (conn !== 6 && conn !== 18 && conn !== 26) throw new HttpError(400, "bad_query", "connectivity must be 6, 18 or 26");
    const vol = await volumeOf(await bodyFile(req, "labels"), "labels");
    const out = await queue.run(async () => {
      const { labels, count } = await connectedComponents(vol, { connectivity: conn });
      return { count, components: await componentStats(labels, { classes: vol }) };
    }, jobTimeout);
    reply.header("content-type", "application/json");
    return toJson(out);
  });

  return app;
}

/** Starts the service and stops it gracefully (accepted jobs finish) on SIGINT/SIGTERM. */
export async function serve(options: ServeOptions = {}): Promise<FastifyInstance> {
  const app = await createServer(options);
  await app.listen({ host: options.host ?? "127.0.0.1", port: options.port ?? 8080 });
  const stop = async () => {
    await app.close();
    process.exit(0);
  };
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  return app;
}
