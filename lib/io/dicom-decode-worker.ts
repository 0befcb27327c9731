/**
 * The worker-thread side of decoding a compressed DICOM series (dicom-decode-pool.ts starts it):
 * it loads the codecs its series needs, then for each job decodes one frame's compressed stream
 * (moved here, not copied) and moves the stored words back. A stream that does not decode is
 * answered with the message the calling thread would have given; the pool turns it into the same
 * DicomError naming the file. It imports only dicom-pixels.ts, so a worker starts light.
 */
import { parentPort, workerData } from "node:worker_threads";
import { decodeCompressed, errText, prepareCodecs, type PixelFormat } from "./dicom-pixels.js";

export interface DecodeJob {
  id: number;
  bytes: Uint8Array;
  fmt: PixelFormat;
}

/** A decoded frame (its stored words, little endian) or the reason it does not decode. */
export type DecodeReply = { id: number; ok: true; raw: Uint8Array } | { id: number; ok: false; message: string };

export interface DecodeWorkerData {
  bhsdDicomDecoder: true;
  transferSyntaxes: string[];
}

/** What a failed check throws here; named as the calling thread's error so the codec wrappers pass it through. */
class FrameError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DicomError";
  }
}
const fail = (msg: string): never => {
  throw new FrameError(msg);
};

if (parentPort && (workerData as Partial<DecodeWorkerData> | undefined)?.bhsdDicomDecoder) {
  const port = parentPort;
  const ready = prepareCodecs((workerData as DecodeWorkerData).transferSyntaxes);
  port.on("message", (job: DecodeJob) => {
    ready.then(
      () => {
        let raw: Uint8Array;
        try {
          raw = decodeCompressed(job.bytes, job.fmt, fail);
        } catch (e) {
          port.postMessage({ id: job.id, ok: false, message: errText(e) } satisfies DecodeReply);
          return;
        }
        // Moved back when the words own their whole buffer (RLE, the codecs' copies), else copied once.
        if (raw.byteOffset !== 0 || raw.byteLength !== raw.buffer.byteLength || !(raw.buffer instanceof ArrayBuffer)) raw = raw.slice();
        port.postMessage({ id: job.id, ok: true, raw } satisfies DecodeReply, [raw.buffer as ArrayBuffer]);
      },
      (e: unknown) =>
        port.postMessage({
          id: job.id,
          ok: false,
          message: `could not be decoded: the codec did not load in the worker (${errText(e)})`,
        } satisfies DecodeReply),
    );
  });
}
