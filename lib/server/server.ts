/**
 * The REST service (fastify). Routes under /v1: health, info, openapi.json, segment, evaluate,
 * components, and results/:id/labels.nii.gz. Bounded everywhere, in this order: a request is
 * admitted first (concurrent jobs plus a bounded queue; 503 + Retry-After when full) and only then
 * is its body read (size cap), decoded (voxel cap, decoded-bytes cap per request and over all
 * requests in flight) and a model loaded. Each job has a time limit that cancels its work (an
 * AbortSignal through segment and the model's nodes; a worker thread terminated for components and
 * evaluate), and its slot is given back only once that work has stopped. Results are files in a
 * folder with a byte, count and age cap, and survive a restart. Every error — ours, fastify's,
 * multipart's, an unknown route — answers `{ error, message }` with a 4xx for client faults.
 * Binds 127.0.0.1 by default; any other address needs a bearer token, checked in constant time on
 * every route but /v1/health. Models come only from the model folder, by name. NIfTI header text
 * (descrip, aux_file, intent_name) is never read into logs.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { IncomingMessage } from "node:http";
import type { Readable } from "node:stream";
import { promisify } from "node:util";
import { gzip } from "node:zlib";
import Fastify, { LogController, type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import multipart from "@fastify/multipart";
import swagger from "@fastify/swagger";
import { activeBackend, backendInfo } from "../backends/index.js";
import { withCancel } from "../backends/cancel.js";
import { PACKAGE_ROOT } from "../paths.js";
import { buildHeader } from "../io/nifti-header.js";
import { NiftiError, readNifti, readNiftiHeader } from "../io/nifti.js";
import { readCt } from "../io/ct.js";
import { DicomError } from "../io/dicom.js";
import { toJson } from "../json.js";
import { segment } from "../model/segment.js";
import { findNamedModel, listNamedModels } from "../model/named.js";
import type { Volume } from "../types.js";
import { VERSION } from "../version.js";
import { Admission, type Ticket } from "./admission.js";
import { clientFault, fastifyCode, HttpError } from "./errors.js";
import { closeIdleWorkers, runInWorker } from "./offload.js";
import { RESULT_ID, ResultStore } from "./results.js";
import { ModelCache } from "./models.js";
import { requestBodies, schemas } from "./schemas.js";
import { registerViewer, VIEWER_PUBLIC_ROUTES } from "./viewer.js";

export { LOG_LEVELS, type LogLevel, type ServeOptions } from "./service.js";
import { LOG_LEVELS, type ServeOptions } from "./service.js";

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;
const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const NIFTI_TYPES = ["application/octet-stream", "application/gzip", "application/x-gzip"];

function tokenDigest(t: string): Buffer {
  return createHash("sha256").update(t).digest();
}

const gzipAsync = promisify(gzip);

/** Label volume → .nii.gz bytes (uint8, the CT's geometry), compressed off the event loop. */
async function niftiBytes(v: Volume<Uint8Array>): Promise<Buffer> {
  const header = buildHeader({
    version: 1,
    dims: v.dims,
    dtype: "uint8",
    spacing: v.spacing,
    affine: v.affine,
    sclSlope: 0,
    sclInter: 0,
    qformCode: 1,
    sformCode: 1,
  });
  return gzipAsync(Buffer.concat([header, Buffer.from(v.data.buffer, v.data.byteOffset, v.data.byteLength)]), { level: 6 });
}

/** An option that must be a finite number ≥ min (an integer where counted), or its default. */
function positive(name: string, v: number | undefined, dflt: number, min = 1, integer = false): number {
  const x = v ?? dflt;
  if (typeof x !== "number" || !(x >= min) || !Number.isFinite(x) || (integer && !Number.isInteger(x))) {
    throw new TypeError(
      `Expected ${integer ? "an integer" : "a number"} >= ${min} for options.${name} but received ${typeof v === "string" ? JSON.stringify(v) : String(v)}`,
    );
  }
  return x;
}

export async function createServer(options: ServeOptions = {}): Promise<FastifyInstance> {
  const host = options.host ?? "127.0.0.1";
  const token = options.token ?? process.env.BHSD_TOKEN;
  if (!LOOPBACK.test(host) && !token)
    throw new Error(`refusing to listen on ${host} without a token: pass --token or set BHSD_TOKEN (127.0.0.1 needs none)`);
  const modelDir = resolve(options.modelDir ?? process.env.BHSD_MODEL_DIR ?? join(PACKAGE_ROOT, "models"));
  const maxBody = positive("maxBodyBytes", options.maxBodyBytes, 512 * 2 ** 20);
  const maxVoxels = positive("maxVoxels", options.maxVoxels, 64 * 2 ** 20);
  const maxRequestBytes = positive("maxRequestBytes", options.maxRequestBytes, 2 ** 30);
  const maxInflightBytes = positive("maxInflightBytes", options.maxInflightBytes, Math.max(2 * 2 ** 30, maxRequestBytes));
  if (maxInflightBytes < maxRequestBytes)
    throw new RangeError(`options.maxInflightBytes (${maxInflightBytes}) must be at least options.maxRequestBytes (${maxRequestBytes})`);
  const maxComponents = positive("maxComponents", options.maxComponents, 10_000, 0, true);
  const concurrency = positive("concurrency", options.concurrency, 1, 1, true);
  const queueMax = positive("queue", options.queue, 4, 0, true);
  const jobTimeout = positive("jobTimeoutMs", options.jobTimeoutMs, 10 * 60_000);
  const bodyIdle = positive("bodyIdleMs", options.bodyIdleMs, 30_000);
  const ttl = positive("resultTtlMs", options.resultTtlMs, 15 * 60_000);
  const logLevel = options.logLevel ?? "warn";
  if (!LOG_LEVELS.includes(logLevel))
    throw new TypeError(`Expected one of ${LOG_LEVELS.join(", ")} for options.logLevel but received ${String(logLevel)}`);
  const admission = new Admission({ concurrency, queue: queueMax, maxRequestBytes, maxInflightBytes });
  const results = new ResultStore({
    dir: resolve(options.resultDir ?? process.env.BHSD_RESULT_DIR ?? join(tmpdir(), "bhsd-results")),
    ttlMs: ttl,
    maxBytes: positive("resultMaxBytes", options.resultMaxBytes, 2 ** 30),
    maxCount: positive("resultMaxCount", options.resultMaxCount, 10_000, 1, true),
  });
  const models = new ModelCache(positive("modelCacheBytes", options.modelCacheBytes, 2 * 2 ** 30));
  const want = token ? tokenDigest(token) : undefined;

  const send = (reply: FastifyReply, status: number, code: string, message: string, headers: Record<string, string> = {}) => {
    // A body we did not read is not read now: the connection closes after the answer.
    if (!reply.request.raw.complete) reply.header("connection", "close");
    return reply.code(status).headers(headers).type("application/json").send({ error: code, message });
  };

  const app = Fastify({
    logger: options.logger === false ? false : { level: logLevel },
    logController: new LogController({ disableRequestLogging: !(logLevel === "debug" || logLevel === "trace") }),
    exposeHeadRoutes: false,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: true, allErrors: false, verbose: true } },
    schemaErrorFormatter: (errors, dataVar) => {
      const e = errors[0]!;
      const where = `${dataVar}${e.instancePath.replace(/\//g, ".")}`;
      const p = e.params as { additionalProperty?: string; allowedValues?: unknown[] };
      if (e.keyword === "additionalProperties") return new Error(`${where} has an unknown parameter "${p.additionalProperty}"`);
      const got = (e as { data?: unknown }).data;
      const allowed = p.allowedValues ? ` (${p.allowedValues.join(", ")})` : "";
      return new Error(`${where} ${e.message}${allowed}, got ${JSON.stringify(got)}`);
    },
    frameworkErrors: (err, _req, reply) => send(reply, 400, "bad_request", err.message),
    clientErrorHandler: (err: Error & { code?: string }, socket) => {
      if (err.code === "ECONNRESET" || socket.destroyed) return;
      const [status, text, code, message] =
        err.code === "HPE_HEADER_OVERFLOW"
          ? [431, "Request Header Fields Too Large", "headers_too_large", "the request headers exceed the server's limit"]
          : err.code === "ERR_HTTP_REQUEST_TIMEOUT"
            ? [408, "Request Timeout", "timeout", "the request was not received in time"]
            : [400, "Bad Request", "bad_request", "the request is not valid HTTP"];
      const body = JSON.stringify({ error: code, message });
      if (socket.writable)
        socket.write(
          `HTTP/1.1 ${status} ${text}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n${body}`,
        );
      socket.destroy();
    },
  });

  // Only the media types the routes take: NIfTI bytes left unread (a stream) until the job is
  // admitted, and multipart (read in the handler, after admission).
  app.removeAllContentTypeParsers();
  app.addContentTypeParser(NIFTI_TYPES, (_req, payload, done) => done(null, payload));
  await app.register(multipart, { limits: { fileSize: maxBody, files: 2, fields: 8, parts: 10, fieldSize: 1024, headerPairs: 64 } });
  await app.register(swagger, {
    openapi: {
      openapi: "3.0.3",
      info: {
        title: "bhsd",
        version: VERSION,
        description: "Intracranial hemorrhage segmentation, bleed volumes and BHSD metrics on head CT (NIfTI).",
      },
      components: { securitySchemes: { bearer: { type: "http", scheme: "bearer" } } },
      security: [{ bearer: [] }],
    },
    transformObject: (doc) => {
      const o = (doc as { openapiObject: { paths?: Record<string, Record<string, Record<string, unknown>>> } }).openapiObject;
      for (const [path, body] of Object.entries(requestBodies)) {
        const op = o.paths?.[path]?.post;
        if (op) op.requestBody = body;
      }
      return o as never;
    },
  });

  const sweep = setInterval(() => results.sweep(), 30_000);
  sweep.unref();
  app.addHook("onClose", async () => {
    clearInterval(sweep);
    models.close();
    await closeIdleWorkers();
  });

  app.addHook("onRequest", async (req) => {
    if (!want || req.routeOptions.url === "/v1/health" || VIEWER_PUBLIC_ROUTES.has(req.routeOptions.url ?? "")) return;
    // RFC 7235: the scheme is case-insensitive.
    const m = /^([A-Za-z]+)[ \t]+(.*)$/.exec(req.headers.authorization ?? "");
    const got = tokenDigest(m && m[1]!.toLowerCase() === "bearer" ? m[2]!.trim() : "");
    if (!timingSafeEqual(got, want))
      throw new HttpError(401, "unauthorized", "a valid bearer token is required (Authorization: Bearer …)", {
        "www-authenticate": "Bearer",
      });
  });

  app.setNotFoundHandler((req, reply) => {
    const path = req.url.split("?")[0]!.slice(0, 200);
    return send(reply, 404, "not_found", `no route ${req.method} ${JSON.stringify(path)}; see /v1/openapi.json`);
  });

  app.setErrorHandler((err: FastifyError, req, reply) => {
    if (err instanceof HttpError) return send(reply, err.status, err.code, err.message, err.headers);
    if (err instanceof NiftiError) return send(reply, 400, "bad_nifti", err.message);
    if (err instanceof DicomError) return send(reply, 400, "bad_dicom", err.message);
    if (err.validation) return send(reply, 400, err.validationContext === "querystring" ? "bad_query" : "bad_request", err.message);
    if (err.code === "FST_ERR_CTP_INVALID_MEDIA_TYPE" || err.code === "FST_ERR_CTP_EMPTY_TYPE") {
      const type = String(req.headers["content-type"] ?? "none").slice(0, 100);
      return send(
        reply,
        415,
        "unsupported_media_type",
        `content-type ${JSON.stringify(type)} is not taken here: send a NIfTI as ${NIFTI_TYPES[0]} or multipart/form-data`,
      );
    }
    if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500)
      return send(reply, err.statusCode, fastifyCode(err.code, err.statusCode), err.message);
    if (clientFault(err)) return send(reply, 400, "bad_request", err.message);
    req.log.error({ err: { message: err.message, stack: err.stack } }, "request failed");
    return send(reply, 500, "internal", "the server could not complete the request");
  });

  // (<name>.onnx files, and nnU-Net trainer folders and MONAI bundles as <name>/ folders)
  const listModels = () => listNamedModels(modelDir).map((m) => m.name);

  /** The model's name, checked (no file is touched beyond listing the folder). */
  function modelName(name: string | undefined): string {
    const available = listModels();
    let n = name;
    if (n === undefined || n === "") {
      if (available.length === 1) n = available[0]!;
      else if (available.includes("default")) n = "default";
      else throw new HttpError(400, "model_required", `name a model with ?model= (available: ${available.join(", ") || "none"})`);
    }
    if (!MODEL_NAME.test(n) || n.includes(".."))
      throw new HttpError(400, "bad_model", "model must be a plain name from the server's model folder (letters, digits, . _ -)");
    if (!available.includes(n)) throw new HttpError(404, "no_such_model", `no model "${n}" (available: ${available.join(", ") || "none"})`);
    return n;
  }

  interface Job {
    ticket: Ticket;
    signal: AbortSignal;
  }

  /**
   * Admits the request, then runs `work` under the job's time limit. The signal aborts on the
   * limit or when the client goes away; the slot is given back only after `work` has settled.
   */
  async function job<T>(req: FastifyRequest, reply: FastifyReply, work: (j: Job) => Promise<T>): Promise<T> {
    const len = Number(req.headers["content-length"]);
    if (len > maxBody) throw new HttpError(413, "too_large", `the body is ${len} bytes; this server takes at most ${maxBody}`);
    const gone = new AbortController();
    const onClose = () => {
      if (!reply.raw.writableFinished) gone.abort(new HttpError(499, "client_closed", "the client closed the connection"));
    };
    reply.raw.once("close", onClose);
    let ticket: Ticket;
    try {
      ticket = await admission.enter(gone.signal);
    } catch (e) {
      reply.raw.off("close", onClose);
      throw e;
    }
    const ctl = new AbortController();
    const timer = setTimeout(
      () => ctl.abort(new HttpError(503, "timeout", `the job took longer than ${jobTimeout} ms and was stopped`, { "retry-after": "30" })),
      jobTimeout,
    );
    const onGone = () => ctl.abort(gone.signal.reason);
    gone.signal.addEventListener("abort", onGone, { once: true });
    if (gone.signal.aborted) onGone();
    try {
      return await work({ ticket, signal: ctl.signal });
    } catch (e) {
      if (ctl.signal.aborted && !(e instanceof HttpError)) throw ctl.signal.reason;
      throw e;
    } finally {
      clearTimeout(timer);
      gone.signal.removeEventListener("abort", onGone);
      reply.raw.off("close", onClose);
      ticket.release();
    }
  }

  /**
   * Runs `read`, the reading of a request's body, until it settles, the job's signal aborts, or no
   * body bytes come for bodyIdleMs. A client gone: the request is destroyed (nobody to answer). The
   * time limit or an idle body: the reading is abandoned, not the socket, so the answer (503
   * timeout, 408 body_timeout) reaches the client, with connection: close; Node then closes the
   * socket, which ends the abandoned read. (A client that sends a few bytes and then nothing would
   * otherwise hold its job slot for the whole time limit, and get no answer at its end.)
   */
  async function reading<T>(raw: IncomingMessage, signal: AbortSignal, read: () => Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    let arm: (() => void) | undefined;
    const closing = (e: HttpError) => new HttpError(e.status, e.code, e.message, { ...e.headers, connection: "close" });
    const stopped = new Promise<never>((_, reject) => {
      const idle = () =>
        reject(closing(new HttpError(408, "body_timeout", `no body bytes came for ${bodyIdle} ms; the request was given up`)));
      arm = () => {
        clearTimeout(timer);
        timer = setTimeout(idle, bodyIdle);
      };
      arm();
      raw.on("data", arm);
      onAbort = () => {
        const why = signal.reason as unknown;
        if (why instanceof HttpError && why.status === 499) raw.destroy();
        reject(why instanceof HttpError ? closing(why) : why);
      };
      signal.addEventListener("abort", onAbort, { once: true });
      if (signal.aborted) onAbort();
    });
    const work = read();
    work.catch(() => {}); // (an abandoned read ends with the socket: its error is nobody's)
    try {
      return await Promise.race([work, stopped]);
    } finally {
      clearTimeout(timer);
      if (arm) raw.off("data", arm);
      if (onAbort) signal.removeEventListener("abort", onAbort);
    }
  }

  /**
   * Reads a NIfTI body stream, at most maxBody bytes. With a content-length the bytes go straight
   * into one buffer as they come (no concatenation at the end, which for hundreds of MB would hold
   * the event loop).
   */
  function readBody(raw: IncomingMessage, stream: Readable, length: number, signal: AbortSignal): Promise<Buffer> {
    return reading(raw, signal, async () => {
      const chunks: Buffer[] = [];
      const into = Number.isSafeInteger(length) && length > 0 ? Buffer.allocUnsafe(length) : undefined;
      let n = 0;
      try {
        for await (const c of stream as AsyncIterable<Buffer>) {
          if (signal.aborted) break;
          if (n + c.length > (into ? into.length : maxBody))
            throw new HttpError(
              413,
              "too_large",
              `the body is more than ${into ? `its content-length of ${into.length}` : maxBody} bytes${into ? "" : ", this server's limit"}`,
            );
          if (into) c.copy(into, n);
          else chunks.push(c);
          n += c.length;
        }
        if (into) return into.subarray(0, n);
      } catch (e) {
        if (e instanceof HttpError) throw e;
        throw new HttpError(400, "bad_body", `the body could not be read: ${(e as Error).message}`);
      }
      return Buffer.concat(chunks, n);
    });
  }

  /** The named multipart files (each at most once, no others), at most maxBody bytes together. */
  async function multipartFiles(req: FastifyRequest, fields: string[], signal: AbortSignal): Promise<Record<string, Buffer>> {
    if (!req.isMultipart())
      throw new HttpError(
        415,
        "unsupported_media_type",
        `send multipart/form-data with the file field${fields.length > 1 ? "s" : ""} ${fields.join(", ")}`,
      );
    const out: Record<string, Buffer> = {};
    let total = 0;
    await reading(req.raw, signal, async () => {
      try {
        for await (const part of req.parts()) {
          if (signal.aborted) break;
          if (part.type !== "file") continue;
          if (!fields.includes(part.fieldname) || out[part.fieldname]) {
            throw new HttpError(
              400,
              "bad_multipart",
              `unexpected file field ${JSON.stringify(part.fieldname.slice(0, 64))}: this route takes one each of ${fields.join(", ")}`,
            );
          }
          // counted as the bytes come, not once a file is whole: the files together never hold
          // more than maxBody (each is also at most maxBody by multipart's own limit)
          const chunks: Buffer[] = [];
          let n = 0;
          for await (const c of part.file as AsyncIterable<Buffer>) {
            total += c.length;
            if (total > maxBody)
              throw new HttpError(413, "too_large", `the files are more than ${maxBody} bytes together, this server's limit`);
            chunks.push(c);
            n += c.length;
          }
          out[part.fieldname] = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, n);
        }
      } catch (e) {
        if (e instanceof HttpError) throw e;
        const err = e as FastifyError;
        if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500)
          throw new HttpError(err.statusCode, fastifyCode(err.code, err.statusCode), err.message);
        throw new HttpError(400, "bad_multipart", `the multipart body could not be read: ${err.message}`);
      }
    });
    for (const f of fields) if (!out[f]) throw new HttpError(400, "missing_field", `multipart field "${f}" is missing`);
    return out;
  }

  /** The request's NIfTI: the octet-stream body, or the multipart file `field`. */
  async function niftiBody(req: FastifyRequest, field: string, signal: AbortSignal): Promise<Buffer> {
    if (req.isMultipart()) return (await multipartFiles(req, [field], signal))[field]!;
    const body = req.body as Readable | undefined;
    if (!body || typeof body.pipe !== "function")
      throw new HttpError(
        415,
        "unsupported_media_type",
        `send the NIfTI as application/octet-stream or as the multipart/form-data file field "${field}"`,
      );
    return readBody(req.raw, body, Number(req.headers["content-length"]), signal);
  }

  /**
   * Decodes a NIfTI after checking its header: voxels against maxVoxels, bytes reserved from the
   * job's budget (a scaled file's float32 voxels beside its stored ones). The reading runs under the
   * job's signal: its time limit or the client leaving stops the native inflate at its next MiB.
   */
  async function decode(bytes: Buffer, name: string, ticket: Ticket, signal: AbortSignal): Promise<Volume> {
    if (bytes.length >= 4 && bytes.readUInt32LE(0) === 0x04034b50) {
      // A zip of a DICOM series: unpacked and voxel bytes bounded by what this request may still hold.
      const room = Math.min(maxVoxels * 4, Math.max(1, maxRequestBytes - ticket.bytes));
      const v = await withCancel(activeBackend(), signal, () => readCt(bytes, { name, maxBytes: room, signal }));
      if (v.data.length > maxVoxels)
        throw new HttpError(413, "too_large", `${name} has ${v.data.length} voxels; this server takes at most ${maxVoxels}`);
      ticket.reserve(v.data.byteLength, name);
      return v;
    }
    const h = await readNiftiHeader(bytes, { name });
    const n = h.dims[0] * h.dims[1] * h.dims[2];
    if (n > maxVoxels) throw new HttpError(413, "too_large", `${name} has ${n} voxels; this server takes at most ${maxVoxels}`);
    ticket.reserve(h.voxelBytes + (h.meta.scaled ? n * 4 : 0), name);
    return withCancel(activeBackend(), signal, () => readNifti(bytes, { name, maxBytes: Math.max(1, h.voxelBytes) }));
  }

  const json = (reply: FastifyReply, text: string) => reply.type("application/json").send(text);
  const limits = {
    maxBodyBytes: maxBody,
    maxVoxels,
    maxRequestBytes,
    maxInflightBytes,
    maxComponents,
    concurrency,
    queue: queueMax,
    jobTimeoutMs: jobTimeout,
    resultTtlMs: ttl,
    resultMaxBytes: results.opts.maxBytes,
    resultMaxCount: results.opts.maxCount,
    modelCacheBytes: models.budget,
  };

  app.get("/v1/health", { schema: schemas.health }, async () => ({ status: "ok", ...admission.load }));
  app.get("/v1/info", { schema: schemas.info }, async () => ({
    version: VERSION,
    node: process.version,
    backends: backendInfo(),
    models: listModels(),
    limits,
  }));
  app.get("/v1/openapi.json", { schema: schemas.openapi }, async () => app.swagger());

  app.post(
    "/v1/segment",
    { schema: schemas.segment },
    async (req: FastifyRequest<{ Querystring: { model?: string; cleanupMinMl?: number; tta?: boolean } }>, reply) => {
      const q = req.query;
      const name = modelName(q.model);
      const text = await job(req, reply, async ({ ticket, signal }) => {
        const bytes = await niftiBody(req, "ct", signal);
        const ct = await decode(bytes, "ct", ticket, signal);
        const found = findNamedModel(modelDir, name);
        if (!found) throw new HttpError(404, "no_such_model", `no model "${name}"`);
        const lease = await models.acquire(name, found.path);
        let out;
        try {
          signal.throwIfAborted();
          out = await segment(ct, lease.model, {
            mirror: q.tta === true,
            maxVoxels,
            signal,
            ...(q.cleanupMinMl !== undefined ? { cleanup: { minVolumeMl: q.cleanupMinMl } } : {}),
          });
        } catch (e) {
          if (e instanceof RangeError && e.message.includes("options.maxVoxels")) {
            throw new HttpError(413, "too_large", `${e.message.replace(/options\.maxVoxels/, "this server's limit")}`);
          }
          throw e;
        } finally {
          lease.release();
        }
        const id = await results.put(await niftiBytes(out.labels));
        return toJson({ ...out.report, labels: `/v1/results/${id}/labels.nii.gz`, expiresInS: Math.round(ttl / 1000) });
      });
      return json(reply, text);
    },
  );

  app.get("/v1/results/:id/labels.nii.gz", { schema: schemas.result }, async (req: FastifyRequest<{ Params: { id: string } }>, reply) => {
    const s = RESULT_ID.test(req.params.id) ? await results.open(req.params.id) : undefined;
    if (!s) throw new HttpError(404, "not_found", "no such result (results expire)");
    return reply.type("application/gzip").send(s);
  });

  app.post(
    "/v1/evaluate",
    { schema: schemas.evaluate },
    async (req: FastifyRequest<{ Querystring: { nsdToleranceMm?: number } }>, reply) => {
      const tau = req.query.nsdToleranceMm;
      if (!req.isMultipart()) throw new HttpError(415, "unsupported_media_type", "send multipart/form-data with the file fields gt, pred");
      const text = await job(req, reply, async ({ ticket, signal }) => {
        const files = await multipartFiles(req, ["gt", "pred"], signal);
        const gt = await decode(files.gt!, "gt", ticket, signal);
        const pred = await decode(files.pred!, "pred", ticket, signal);
        return runInWorker({ kind: "evaluate", gt, pred, ...(tau !== undefined ? { nsdToleranceMm: tau } : {}) }, signal);
      });
      return json(reply, text);
    },
  );

  app.post(
    "/v1/components",
    { schema: schemas.components },
    async (req: FastifyRequest<{ Querystring: { connectivity: 6 | 18 | 26 } }>, reply) => {
      const connectivity = req.query.connectivity ?? 26;
      const text = await job(req, reply, async ({ ticket, signal }) => {
        const vol = await decode(await niftiBody(req, "labels", signal), "labels", ticket, signal);
        return runInWorker({ kind: "components", volume: vol, connectivity, maxComponents }, signal);
      });
      return json(reply, text);
    },
  );

  await registerViewer(app); // the web viewer: / and viewer/niivue.js (lib/server/viewer.ts)
  return app;
}

/**
 * Starts the service and returns it, listening. It installs no signal handlers and never exits
 * the process: stop it with `app.close()` (accepted requests finish first); `bhsd serve` does so
 * on SIGINT/SIGTERM.
 */
export async function serve(options: ServeOptions = {}): Promise<FastifyInstance> {
  const app = await createServer(options);
  await app.listen({ host: options.host ?? "127.0.0.1", port: options.port ?? 8080 });
  return app;
}
