/**
 * The REST service as the package's public types describe it: what createServer() returns is a
 * fastify instance, but the declarations name only the members documented here, written without
 * fastify's or Node's types so that a TypeScript user needs neither (@types/node included). Cast
 * to fastify's FastifyInstance for the rest.
 */

export type LogLevel = "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
export const LOG_LEVELS: readonly LogLevel[] = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];

export interface ServeOptions {
  host?: string;
  port?: number;
  /** Bearer token; required when host is not a loopback address. Default BHSD_TOKEN. */
  token?: string;
  /**
   * Folder of models: `<name>.onnx` (with its sidecar), and nnU-Net trainer folders and MONAI
   * bundles as `<name>/`. Default BHSD_MODEL_DIR or the package's models/.
   */
  modelDir?: string;
  /**
   * Bytes of models kept loaded between requests (each counted by its weights as loaded, or its
   * .onnx file's size where larger), least recently used dropped first and disposed once no request
   * uses it; default 2 GiB. The model a request needs is always loaded, even alone over the budget.
   */
  modelCacheBytes?: number;
  /** Largest request body (bytes; a multipart body's files together), default 512 MiB. */
  maxBodyBytes?: number;
  /** Largest volume (voxels), also every grid segment derives from it (resampled, padded); default 64 Mi. */
  maxVoxels?: number;
  /** Decoded voxel bytes one request may hold (default 1 GiB) and all admitted requests together (default 2 GiB). */
  maxRequestBytes?: number;
  maxInflightBytes?: number;
  /** Most connected components /v1/components reports (default 10,000; more → 422). */
  maxComponents?: number;
  /** Jobs run at once (default 1) and jobs waiting (default 4). */
  concurrency?: number;
  queue?: number;
  /** Time limit of one job from its admission (ms, default 10 min); the job's work is stopped then. */
  jobTimeoutMs?: number;
  /** Longest wait for the next bytes of a request's body (ms, default 30 s); then 408 body_timeout, the job slot given back. */
  bodyIdleMs?: number;
  /** Folder of the label results (default BHSD_RESULT_DIR or <tmpdir>/bhsd-results), their lifetime (ms, default 15 min), total bytes (default 1 GiB) and count (default 10,000). */
  resultDir?: string;
  resultTtlMs?: number;
  resultMaxBytes?: number;
  resultMaxCount?: number;
  /** Log level (default "warn"); requests are logged one line each only at "debug" and "trace". */
  logLevel?: LogLevel;
  /** false: no logger at all (tests). */
  logger?: boolean;
}

/** One request made in-process, without a socket (fastify's inject). */
export interface InjectRequest {
  method?: "GET" | "POST" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "PATCH";
  url: string;
  headers?: Record<string, string>;
  payload?: string | Uint8Array | Record<string, unknown>;
}

export interface InjectResponse {
  statusCode: number;
  headers: Record<string, string | string[] | number | undefined>;
  body: string;
  json(): unknown;
}

export interface Service {
  /** Starts listening; resolves with the address (e.g. http://127.0.0.1:8080). */
  listen(options: { host?: string; port?: number }): Promise<string>;
  /** Stops taking connections, lets the accepted requests finish, releases the models. */
  close(): Promise<undefined>;
  /** Resolves once every plugin and route is registered. */
  ready(): PromiseLike<unknown>;
  inject(request: InjectRequest): Promise<InjectResponse>;
  /** The listening socket's address (port 0 picks a free one). */
  readonly server: { address(): { address: string; family: string; port: number } | string | null };
}
