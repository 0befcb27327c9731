/**
 * Models whose tensors live in external files (PyTorch ≥ 2.6's `torch.onnx.export(..., dynamo=True)`
 * writes `model.onnx` + `model.onnx.data` by default). The fixtures are nnU-Net's ResEnc network
 * of test/fixtures/networks with its tensors moved out by onnx's own writers three ways
 * (test/fixtures/external-data/make_fixtures.py): bhsd must give PyTorch's output, as onnxruntime
 * does on the same files; and a model file naming data it may not read (outside its folder, a FIFO,
 * a range past the end, overlapping tensors, absurd sizes) is refused at load with the reason, in
 * bounded time, with no file left open.
 */
import test from "ava";
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import ort from "onnxruntime-node";
import { engineMemory } from "../lib/backends/index.js";
import { loadModel, readNpy, setBackend } from "../lib/index.js";
import { allocArray } from "../lib/volume.js";
import { mentions } from "../lib/model/external-data.js";
import { ModelProto } from "../lib/model/onnx-proto.js";
import { modelHash } from "../lib/queue/common.js";
import { backendsUnderTest, ROOT } from "./helpers.js";
import { checkedFolder, networkFixture } from "./paths.js";
import { scaleDiff } from "./ort.js";

const DIR = join(ROOT, "test", "fixtures", "external-data");
const { file: fixture, listed: LISTED } = checkedFolder(DIR);
const network = networkFixture;

const VARIANTS = ["one-file", "per-tensor", "aligned"] as const;

test("every fixture file is listed in SHA256SUMS and matches it", (t) => {
  const listed = [...LISTED].sort();
  const found: string[] = [];
  for (const v of VARIANTS) {
    const walk = (d: string): void => {
      for (const e of readdirSync(d, { withFileTypes: true }))
        e.isDirectory() ? walk(join(d, e.name)) : found.push(join(d, e.name).slice(DIR.length + 1));
    };
    walk(join(DIR, v));
  }
  t.deepEqual(found.sort(), listed);
  for (const f of listed) t.notThrows(() => fixture(f), f);
});

const input = () => readNpy(network("resencunet_input.npy"));
const expected = () => readNpy(network("resencunet_expected.npy"));

for (const v of VARIANTS) {
  // onnxruntime reads the one-file and aligned layouts; it refuses a Constant node whose value is
  // external ("Cannot parse data from external tensors"), which per-tensor has: PyTorch alone there
  if (v !== "per-tensor")
    test(`onnxruntime-node: ${v} equals PyTorch (fixture check)`, async (t) => {
      const x = await input(),
        want = await expected();
      const session = await ort.InferenceSession.create(fixture(`${v}/resencunet.onnx`), { intraOpNumThreads: 1 });
      try {
        const out = (await session.run({ input: new ort.Tensor("float32", x.data as Float32Array, x.shape) })).output!;
        t.true(scaleDiff(out.data as Float32Array, want.data) <= 1e-4);
      } finally {
        await session.release();
      }
    });

  for (const { name: backend } of backendsUnderTest())
    test.serial(`${backend}: ${v} from a path equals PyTorch`, async (t) => {
      setBackend(backend);
      const x = await input(),
        want = await expected();
      const model = await loadModel(fixture(`${v}/resencunet.onnx`));
      const y = await model.run({ data: x.data as Float32Array, shape: x.shape });
      const d = scaleDiff(y.data, want.data);
      t.true(d <= 1e-4, `max |bhsd − PyTorch| is ${d} of max |PyTorch|`);
    });
}

test.serial("a model handed over as bytes reads its data from config.externalData, and says how when it is missing", async (t) => {
  setBackend("ts");
  const x = await input(),
    want = await expected();
  const bytes = readFileSync(fixture("one-file/resencunet.onnx"));
  const data = readFileSync(fixture("one-file/resencunet.onnx.data"));
  const e = await t.throwsAsync(loadModel(bytes));
  t.regex(
    e!.message,
    /handed over as bytes.*load it from its path, or pass the file in config\.externalData \(\{ "resencunet\.onnx\.data": bytes \}\)/,
  );
  const model = await loadModel(bytes, { externalData: { "./resencunet.onnx.data": new Uint8Array(data) } });
  const y = await model.run({ data: x.data as Float32Array, shape: x.shape });
  t.true(scaleDiff(y.data, want.data) <= 1e-4);
  const other = await t.throwsAsync(loadModel(bytes, { externalData: { "weights.bin": data } }));
  t.regex(other!.message, /external file "resencunet\.onnx\.data" is not among config\.externalData \("weights\.bin"\)/);
  const bad = await t.throwsAsync(loadModel(bytes, { externalData: { "resencunet.onnx.data": [1, 2] as unknown as Uint8Array } }));
  t.true(bad instanceof TypeError);
  t.regex(
    bad!.message,
    /Expected the file's bytes \(a Uint8Array\) for config\.externalData\["resencunet\.onnx\.data"\] but received array/,
  );
  const notObject = await t.throwsAsync(loadModel(bytes, { externalData: data as unknown as Record<string, Uint8Array> }));
  t.regex(notObject!.message, /Expected an object of file name → bytes for config\.externalData but received Buffer/);
});

// ---- hostile models: the one-file model with its references rewritten ----

type Entry = { key: string; value: string };
type Tensor = { name: string; externalData: Entry[]; dims: number[]; dataLocation?: number; dataType: number };
/** The one-file model decoded, its initializers' external_data editable; `write` saves it to `dir`. */
function hostile(edit: (inits: Tensor[]) => void): Uint8Array {
  const m = ModelProto.decode(readFileSync(fixture("one-file/resencunet.onnx"))) as unknown as { graph: { initializer: Tensor[] } };
  edit(m.graph.initializer);
  return ModelProto.encode(m as never).finish();
}
const set = (t: Tensor, key: string, value: string) => {
  const e = t.externalData.find((x) => x.key === key);
  if (e) e.value = value;
  else t.externalData.push({ key, value } as Entry);
};
const drop = (t: Tensor, key: string) => (t.externalData = t.externalData.filter((e) => e.key !== key));
const get = (t: Tensor, key: string) => t.externalData.find((x) => x.key === key)?.value;

/** Open file descriptors of this process (Linux), to see that a refusal leaves none behind. */
const openFds = () => readdirSync("/proc/self/fd").length;

test.serial(
  "a model naming data outside its folder, a FIFO, a folder, a missing file, a range past the end or overlapping tensors is refused",
  async (t) => {
    const root = mkdtempSync(join(tmpdir(), "bhsd-ext-"));
    try {
      const dir = join(root, "model");
      mkdirSync(dir);
      const data = fixture("one-file/resencunet.onnx.data");
      copyFileSync(data, join(root, "secret.data")); // beside the folder, not in it
      copyFileSync(data, join(dir, "resencunet.onnx.data"));
      symlinkSync(join(root, "secret.data"), join(dir, "link.data"));
      symlinkSync("resencunet.onnx.data", join(dir, "inside-link.data")); // a link that stays inside is fine
      execFileSync("mkfifo", [join(dir, "fifo.data")]);
      mkdirSync(join(dir, "folder.data"));
      const size = readFileSync(data).length;
      const fds = openFds();
      const cases: [string, (inits: Tensor[]) => void, RegExp][] = [
        [
          "..",
          (i) => i.forEach((x) => set(x, "location", "../secret.data")),
          /location "\.\.\/secret\.data" climbs out of the model's folder/,
        ],
        [
          "absolute",
          (i) => i.forEach((x) => set(x, "location", join(root, "secret.data"))),
          /is an absolute path; bhsd reads external data only from the model's own folder/,
        ],
        ["a Windows drive", (i) => i.forEach((x) => set(x, "location", "C:\\secret.data")), /is an absolute path/],
        [
          "a link out",
          (i) => i.forEach((x) => set(x, "location", "link.data")),
          /external file "link\.data" leads out of the model's folder/,
        ],
        ["a FIFO", (i) => i.forEach((x) => set(x, "location", "fifo.data")), /external file "fifo\.data" \(.*\) is not a regular file/],
        [
          "a folder",
          (i) => i.forEach((x) => set(x, "location", "folder.data")),
          /external file "folder\.data" \(.*\) is not a regular file/,
        ],
        ["missing", (i) => i.forEach((x) => set(x, "location", "gone.data")), /external file "gone\.data": no such file beside the model/],
        ["a NUL", (i) => set(i[0]!, "location", "a\0b"), /location "a\0b" is not a file name/],
        [
          "past the end",
          (i) => set(i[i.length - 1]!, "offset", String(size - 4)),
          new RegExp(`bytes ${size - 4}–\\d+ of external file "resencunet\\.onnx\\.data", which has ${size}`),
        ],
        [
          "a length unlike its dims",
          (i) => set(i[0]!, "length", String(Number(get(i[0]!, "length")) + 4)),
          /external data length \d+ bytes, but dims \[[\d,]+\] of 4-byte values take \d+/,
        ],
        ["overlapping", (i) => set(i[1]!, "offset", get(i[0]!, "offset") ?? "0"), /overlap in external file "resencunet\.onnx\.data"/],
        ["an offset that is not a number", (i) => set(i[0]!, "offset", "12abc"), /external data offset "12abc" is not a byte count/],
        ["no location", (i) => drop(i[0]!, "location"), /is marked external but names no file/],
        // sizes from dims alone (no length entries): refused before anything is opened or allocated
        [
          "absurd dims",
          (i) => ((i[0]!.dims = [2 ** 40, 2 ** 40]), drop(i[0]!, "length")),
          /has dims \[1099511627776,1099511627776\], not a valid size/,
        ],
        [
          "a float tensor of 2^32 values",
          (i) => ((i[0]!.dims = [2 ** 32]), drop(i[0]!, "length")),
          /has dims \[4294967296\]: 4294967296 values, more than bhsd takes for a float tensor/,
        ],
        [
          "2^28 values in every float tensor (over 100 GiB in all)",
          (i) => i.filter((x) => x.dataType === 1).forEach((x) => ((x.dims = [2 ** 28]), drop(x, "length"))),
          /its external data comes to \d+ bytes as the engine holds it, more than bhsd reads for one model/,
        ],
      ];
      for (const [what, edit, msg] of cases) {
        const path = join(dir, "resencunet.onnx");
        writeFileSync(path, hostile(edit));
        const t0 = performance.now();
        const e = await t.throwsAsync(loadModel(path), undefined, what);
        t.regex(e?.message ?? "", msg, what);
        t.true(performance.now() - t0 < 5000, `${what}: refused in ${performance.now() - t0} ms`);
      }
      t.is(openFds(), fds, "every file opened for a refused model is closed");
      // a link that stays inside the folder is read
      writeFileSync(
        join(dir, "ok.onnx"),
        hostile((i) => i.forEach((x) => set(x, "location", "inside-link.data"))),
      );
      const x = await input();
      const y = await (await loadModel(join(dir, "ok.onnx"))).run({ data: x.data as Float32Array, shape: x.shape });
      t.true(scaleDiff(y.data, (await expected()).data) <= 1e-4);
      t.is(openFds(), fds, "and its data file is closed after the load");
      t.is(dirname(join(dir, "ok.onnx")), dir);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  },
);

test.serial(
  "external_data entries without data_location EXTERNAL are ignored (the data is inline), as onnx and onnxruntime read them",
  async (t) => {
    setBackend("ts");
    const data = readFileSync(fixture("one-file/resencunet.onnx.data"));
    const bytes = hostile((inits) => {
      const x = inits[0]!;
      const offset = Number(get(x, "offset") ?? 0),
        length = Number(get(x, "length"));
      (x as unknown as { rawData: Uint8Array }).rawData = data.subarray(offset, offset + length);
      x.dataLocation = 0; // stale entries left behind by a tool
      set(x, "location", "no-such-file.data");
    });
    const root = mkdtempSync(join(tmpdir(), "bhsd-ext-"));
    try {
      writeFileSync(join(root, "m.onnx"), bytes);
      copyFileSync(fixture("one-file/resencunet.onnx.data"), join(root, "resencunet.onnx.data"));
      const x = await input(),
        want = await expected();
      const session = await ort.InferenceSession.create(join(root, "m.onnx"), { intraOpNumThreads: 1 });
      const o = (await session.run({ input: new ort.Tensor("float32", x.data as Float32Array, x.shape) })).output!;
      await session.release();
      t.true(scaleDiff(o.data as Float32Array, want.data) <= 1e-4, "onnxruntime reads the inline data");
      const y = await (await loadModel(join(root, "m.onnx"))).run({ data: x.data as Float32Array, shape: x.shape });
      t.true(scaleDiff(y.data, want.data) <= 1e-4);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  },
);

test("the queue's model hash takes in the external data: new weights in the same .onnx make another job id; a FIFO does not hang it", async (t) => {
  const root = mkdtempSync(join(tmpdir(), "bhsd-ext-"));
  try {
    const model = join(root, "resencunet.onnx"),
      data = join(root, "resencunet.onnx.data");
    copyFileSync(fixture("one-file/resencunet.onnx"), model);
    copyFileSync(fixture("one-file/resencunet.onnx.data"), data);
    const before = await modelHash(model);
    const bytes = readFileSync(data);
    bytes[100] = bytes[100]! ^ 1;
    writeFileSync(data, bytes);
    t.not(await modelHash(model), before);
    rmSync(data);
    execFileSync("mkfifo", [data]);
    t.not(await modelHash(model), before); // (returns: the FIFO is not read)
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test.serial(
  "a model file is read into engine memory and given back once parsed; a FIFO or a folder as the model is refused at once",
  async (t) => {
    setBackend("native");
    const path = network("resencunet_op17.onnx");
    const size = readFileSync(path).length;
    t.true(size >= 1 << 16, "the file is large enough to take engine memory");
    await loadModel(path); // (the engine's first blocks of these sizes)
    const before = engineMemory().liveBytes;
    const model = await loadModel(path);
    t.true(
      engineMemory().liveBytes - before < size,
      `engine memory held after the load grew by ${engineMemory().liveBytes - before} bytes`,
    );
    model.dispose();
    const root = mkdtempSync(join(tmpdir(), "bhsd-ext-"));
    try {
      execFileSync("mkfifo", [join(root, "fifo.onnx")]);
      const t0 = performance.now();
      await t.throwsAsync(loadModel(join(root, "fifo.onnx")), { message: /fifo\.onnx: not a regular file/ });
      await t.throwsAsync(loadModel(root), { message: /not a regular file/ });
      t.true(performance.now() - t0 < 5000);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  },
);

test.serial(
  "a model loaded from a path keeps nothing of the file's engine block: the block reused and overwritten, the model still equals PyTorch",
  async (t) => {
    setBackend("native");
    const path = network("resencunet_op17.onnx");
    const size = readFileSync(path).length;
    const model = await loadModel(path);
    // the released block comes back to the next requests of its size (after the engine's deferred free)
    for (let i = 0; i < 2; i++) await new Promise((r) => setImmediate(r));
    const junk = Array.from({ length: 4 }, () => (allocArray("uint8", size, "junk", { overwritten: true }) as Uint8Array).fill(0x7f));
    const x = await input(),
      want = await expected();
    const y = await model.run({ data: x.data as Float32Array, shape: x.shape });
    t.true(scaleDiff(y.data, want.data) <= 1e-4);
    t.is(junk.length, 4);
  },
);

test("the scan for external data references finds the key across its 1 MB reads, and nothing where there is none", async (t) => {
  const root = mkdtempSync(join(tmpdir(), "bhsd-ext-"));
  try {
    for (const at of [0, (1 << 20) - 7, (1 << 20) - 3, (1 << 20) - 1, 1 << 20, (2 << 20) - 4]) {
      const bytes = new Uint8Array((2 << 20) + 64).fill(0x61);
      bytes.set(new TextEncoder().encode("location"), at);
      writeFileSync(join(root, "f"), bytes);
      t.true(await mentions(join(root, "f"), "location"), `at byte ${at}`);
    }
    const none = new Uint8Array((2 << 20) + 64).fill(0x61);
    none.set(new TextEncoder().encode("locatio"), (1 << 20) - 3); // a prefix only, across the boundary
    writeFileSync(join(root, "f"), none);
    t.false(await mentions(join(root, "f"), "location"));
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
