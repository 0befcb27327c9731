/** The service's errors: an HTTP status, a short code and a message, answered as `{ error, message }`. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = "HttpError";
  }
}

/** fastify's and @fastify/multipart's error codes → the service's codes (the status is theirs). */
const FASTIFY_CODES: Record<string, string> = {
  FST_ERR_CTP_INVALID_MEDIA_TYPE: "unsupported_media_type",
  FST_ERR_CTP_BODY_TOO_LARGE: "too_large",
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: "bad_request",
  FST_ERR_CTP_EMPTY_TYPE: "unsupported_media_type",
  FST_ERR_CTP_INVALID_TYPE: "unsupported_media_type",
  FST_ERR_VALIDATION: "bad_query",
  FST_REQ_FILE_TOO_LARGE: "too_large",
  FST_FILES_LIMIT: "too_large",
  FST_PARTS_LIMIT: "too_large",
  FST_FIELDS_LIMIT: "too_large",
  FST_PROTO_VIOLATION: "bad_multipart",
  FST_INVALID_MULTIPART_CONTENT_TYPE: "unsupported_media_type",
};

export function fastifyCode(code: string | undefined, status: number): string {
  if (code && FASTIFY_CODES[code]) return FASTIFY_CODES[code]!;
  return status === 413 ? "too_large" : status === 415 ? "unsupported_media_type" : status === 404 ? "not_found" : "bad_request";
}

/** A JS error that says the input was bad (the library's checks), not that the server failed. */
export function clientFault(err: Error): boolean {
  if (err instanceof RangeError)
    return !/Invalid array length|allocation failed|Maximum call stack|Invalid typed array length/i.test(err.message);
  return err instanceof TypeError && err.message.startsWith("Expected ");
}
