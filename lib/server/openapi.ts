/** The service's OpenAPI 3 description, served at /v1/openapi.json. */
export function openapi(version: string): Record<string, unknown> {
  const error = { type: "object", properties: { error: { type: "string" }, message: { type: "string" } }, required: ["error", "message"] };
  const errors = {
    "400": { description: "bad input", content: { "application/json": { schema: error } } },
    "401": { description: "missing or wrong bearer token", content: { "application/json": { schema: error } } },
    "413": { description: "body or volume too large", content: { "application/json": { schema: error } } },
    "503": { description: "busy (queue full) or job timed out; see Retry-After", content: { "application/json": { schema: error } } },
  };
  const nifti = { "application/octet-stream": { schema: { type: "string", format: "binary" } } };
  return {
    openapi: "3.0.3",
    info: { title: "bhsd", version, description: "Intracranial hemorrhage segmentation, bleed volumes and BHSD metrics on head CT (NIfTI)." },
    components: { securitySchemes: { bearer: { type: "http", scheme: "bearer" } } },
    security: [{ bearer: [] }],
    paths: {
      "/v1/health": { get: { security: [], summary: "liveness and queue load", responses: { "200": { description: "ok" } } } },
      "/v1/info": { get: { summary: "version, backends, models, limits", responses: { "200": { description: "ok" }, ...errors } } },
      "/v1/segment": {
        post: {
          summary: "segment a head CT (NIfTI, optionally gzipped) with a model from the server's folder",
          parameters: [
            { name: "model", in: "query", schema: { type: "string" } },
            { name: "cleanupMinMl", in: "query", schema: { type: "number" } },
            { name: "tta", in: "query", schema: { type: "boolean" } },
          ],
          requestBody: { content: { ...nifti, "multipart/form-data": { schema: { type: "object", properties: { ct: { type: "string", format: "binary" } } } } } },
          responses: { "200": { description: "the report, with `labels`: a URL of the label NIfTI, valid for `expiresInS` seconds" }, ...errors },
        },
      },
      "/v1/results/{id}/labels.nii.gz": { get: { parameters: [{ name: "id", in: "path", required: true, schema: { type: "string" } }], responses: { "200": { description: "label NIfTI (uint8, gzip)" }, "404": { description: "unknown or expired" } } } },
      "/v1/evaluate": {
        post: {
          summary: "metrics of a predicted label volume against ground truth (metrics.md); NaN and Infinity as \"nan\" and \"inf\"",
          parameters: [{ name: "nsdToleranceMm", in: "query", schema: { type: "number" } }],
          requestBody: { content: { "multipart/form-data": { schema: { type: "object", properties: { gt: { type: "string", format: "binary" }, pred: { type: "string", format: "binary" } } } } } },
          responses: { "200": { description: "CaseMetrics" }, ...errors },
        },
      },
      "/v1/components": {
        post: {
          summary: "connected components (bleeds) of a label volume with per-bleed statistics",
          parameters: [{ name: "connectivity", in: "query", schema: { type: "integer", enum: [6, 18, 26] } }],
          requestBody: { content: { ...nifti, "multipart/form-data": { schema: { type: "object", properties: { labels: { type: "string", format: "binary" } } } } } },
          responses: { "200": { description: "count and components" }, ...errors },
        },
      },
    },
  };
}
