/**
 * The routes' JSON Schemas: fastify validates query strings and path parameters with them (ajv)
 * and @fastify/swagger builds /v1/openapi.json from them. NIfTI bodies are streams that the
 * handlers read after admission, so their request bodies are described here (requestBodies) and
 * added to the document, not validated by ajv.
 */
const error = {
  type: "object",
  properties: { error: { type: "string" }, message: { type: "string" } },
  required: ["error", "message"],
} as const;

const e = (description: string) => ({ description, ...error });
const common = {
  400: e("bad input: query, path, NIfTI, multipart or labels (`error` says which)"),
  401: e("missing or wrong bearer token"),
  404: e("no such route, model or result"),
};
const jobErrors = {
  ...common,
  408: e("the request's body stopped coming (no bytes for bodyIdleMs); the connection is closed"),
  413: e("body, volume, decoded bytes or a derived grid beyond the server's limits"),
  415: e("unsupported media type"),
  422: e("valid NIfTI whose content cannot be processed (labels out of range, too many components)"),
  503: e("busy (queue or decoded-bytes budget full) or the job hit its time limit and was stopped; see Retry-After"),
};

const binary = { type: "string", format: "binary" } as const;
const nifti = { "application/octet-stream": { schema: binary }, "application/gzip": { schema: binary } };
const form = (fields: string[]) => ({
  "multipart/form-data": { schema: { type: "object", properties: Object.fromEntries(fields.map((f) => [f, binary])), required: fields } },
});

/** Request bodies by path, for the OpenAPI document. */
export const requestBodies: Record<string, unknown> = {
  "/v1/segment": {
    required: true,
    description: "the CT as NIfTI (.nii or gzipped), or the multipart file `ct`",
    content: { ...nifti, ...form(["ct"]) },
  },
  "/v1/evaluate": {
    required: true,
    description: "ground truth and prediction label volumes (NIfTI, labels 0..5)",
    content: form(["gt", "pred"]),
  },
  "/v1/components": {
    required: true,
    description: "a label volume as NIfTI, or the multipart file `labels`",
    content: { ...nifti, ...form(["labels"]) },
  },
};

const query = (properties: Record<string, unknown>) => ({ type: "object", additionalProperties: false, properties });
const ok = (description: string) => ({ description, type: "object", additionalProperties: true });

export const schemas = {
  health: {
    summary: "liveness and queue load (no token needed)",
    security: [],
    response: {
      200: {
        description: "ok",
        type: "object",
        properties: { status: { type: "string" }, active: { type: "integer" }, waiting: { type: "integer" } },
        required: ["status", "active", "waiting"],
      },
    },
  },
  info: { summary: "version, backends, models, limits", response: { 200: ok("ok"), ...common } },
  openapi: { summary: "this document", response: { 200: ok("the OpenAPI 3 document"), ...common } },
  segment: {
    summary: "segment a head CT (NIfTI, optionally gzipped) with a model from the server's folder",
    querystring: query({
      model: { type: "string", maxLength: 128, description: "a model name from the server's folder (default: the only one, or `default`)" },
      cleanupMinMl: { type: "number", minimum: 0, description: "remove bleeds smaller than this (mL)" },
      tta: { type: "boolean", description: "test-time mirroring (`true` or `false`)" },
    }),
    response: { 200: ok("the report, with `labels`: a URL of the label NIfTI, valid for `expiresInS` seconds"), ...jobErrors },
  },
  result: {
    summary: "a segmentation's label NIfTI (uint8, gzip)",
    params: {
      type: "object",
      properties: { id: { type: "string", pattern: "^[0-9a-f]{32}$", description: "the result's id" } },
      required: ["id"],
    },
    response: { 200: { description: "label NIfTI (uint8, gzip)", content: { "application/gzip": { schema: binary } } }, ...common },
  },
  evaluate: {
    summary: 'metrics of a predicted label volume against ground truth (metrics.md); NaN and Infinity as "nan" and "inf"',
    querystring: query({ nsdToleranceMm: { type: "number", minimum: 0, description: "surface Dice tolerance (mm, default 1)" } }),
    response: { 200: ok("CaseMetrics"), ...jobErrors },
  },
  components: {
    summary: "connected components (bleeds) of a label volume with per-bleed statistics",
    querystring: query({ connectivity: { type: "integer", enum: [6, 18, 26], default: 26, description: "voxel connectivity" } }),
    response: { 200: ok("count and components"), ...jobErrors },
  },
};
