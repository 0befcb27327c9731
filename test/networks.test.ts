/**
 * The widely used 3D segmentation networks (issue 17), built from their authors' own code with
 * random weights and exported by torch.onnx.export at opsets 13 and 17: bhsd must give PyTorch's
 * output (test/fixtures/networks/, made by make_fixtures.py there; see its README), or refuse the
 * file at load naming what it cannot run — never load it and then answer wrongly.
 */
import test from "ava";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import ort from "onnxruntime-node";
import { loadModel, readNpy, setBackend } from "../lib/index.js";
import { ModelProto } from "../lib/model/onnx-proto.js";
import { backendsUnderTest, ROOT } from "./helpers.js";
import { scaleDiff } from "./ort.js";

/**
 * The networks, and whether bhsd runs them today. Flip `runs` to true when the ops land: a
 * `runs: false` network must be refused by loadModel with every op it cannot run named; one that
 * loads instead fails its test (flip it if its output is right, fix the engine if not).
 * `knownBug`: loads, then throws or answers wrongly at run time (against the README's promise).
 * Its comparison is registered with `test.failing`, so the suite stays green while the bug is
 * there and turns red once it is fixed: then set `runs: true` and drop `knownBug`.
 */
const NETWORKS: { name: string; runs: boolean; knownBug?: string; pathOnly?: boolean }[] = [
  { name: "plainconvunet", runs: true }, // nnU-Net v2 PlainConvUNet
  { name: "resencunet", runs: true }, // nnU-Net v2 ResidualEncoderUNet (ResEnc-M preset): Pad before each skip's AveragePool
  { name: "basicunet", runs: true }, // MONAI BasicUNet: ConstantOfShape, Transpose, Pad (edge)
  { name: "unetr", runs: true }, // MONAI UNETR: Transpose, MatMul, Einsum, LayerNormalization (or ReduceMean…), Erf, Div
  { name: "monaiunet", runs: true }, // MONAI UNet (residual units, PReLU, instance norm without affine): norm scale/bias from Constant nodes
  { name: "attentionunet", runs: true }, // MONAI AttentionUnet
  { name: "segresnet", runs: true }, // MONAI SegResNet (GroupNorm as Reshape→InstanceNorm→Reshape→Mul→Add; int64 raw_data in a Buffer)
  { name: "dynunet", runs: true }, // MONAI DynUNet (residual blocks)
  // MONAI SwinUNETR (shifted-window attention: Mod, Slice/Concat rolls, batched MatMul, LayerNorm as
  // ReduceMean/Pow/Sqrt). torch 1.13 exports it at opset 13 only (the opset 17 error is in the
  // manifest); 16 MB and a 64³ input at its smallest, so it runs from a path only (the other ways
  // of handing a model over are the same code, tested on the networks above)
  { name: "swinunetr", runs: true, pathOnly: true },
];
const OPSETS = [13, 17] as const;

const DIR = join(ROOT, "test", "fixtures", "networks");
interface ManifestEntry {
  probe_only?: boolean; // exported to see what the exporter makes, files not kept
  /** opsets torch 1.13 could not export this network at, with the exporter's error */
  export_errors?: Record<string, string>;
  input: string;
  expected: string;
  input_shape: number[];
  output_shape: number[];
  opsets: Record<string, { file: string; op_types: Record<string, number> }>;
  /** a second input shape (dynamic axes): one loaded model must answer both, in either order */
  second?: { input: string; expected: string; input_shape: number[]; output_shape: number[] };
}
const manifest = JSON.parse(readFileSync(join(DIR, "manifest.json"), "utf8")) as {
  networks: Record<string, ManifestEntry>;
  sha256: Record<string, string>;
};

/** A fixture file's path, checked against manifest.json's sha256 (a damaged copy fails loudly). */
function fixture(file: string): string {
  const path = join(DIR, file);
  const want = manifest.sha256[file];
  if (!want) throw new Error(`${file} is not listed in ${join(DIR, "manifest.json")}`);
  const got = createHash("sha256").update(readFileSync(path)).digest("hex");
  if (got !== want) throw new Error(`${path} has sha256 ${got}, manifest.json says ${want}`);
  return path;
}

/** The same model file handed to loadModel four ways. */
function sources(path: string): [string, string | Uint8Array][] {
  const file = readFileSync(path);
  // a Node Buffer that is a view at a nonzero offset into a larger ArrayBuffer (as Buffer.concat,
  // pooled reads and network bodies give): offsets into raw_data must be relative to the view
  const pool = Buffer.alloc(file.length + 24, 0xa5);
  file.copy(pool, 13);
  return [
    ["a path", path],
    ["a Node Buffer", file],
    ["a Node Buffer at an offset", pool.subarray(13, 13 + file.length)],
    ["a plain Uint8Array", new Uint8Array(file)],
  ];
}

test("every network in the manifest is listed here, and every listed one has its fixtures", (t) => {
  const kept = Object.keys(manifest.networks).filter((n) => !manifest.networks[n]!.probe_only);
  t.deepEqual(NETWORKS.map((n) => n.name).sort(), kept.sort());
  for (const { name, runs, knownBug } of NETWORKS) {
    const m = manifest.networks[name]!;
    // every opset is either exported or has its export error recorded
    t.deepEqual([...Object.keys(m.opsets), ...Object.keys(m.export_errors ?? {})].sort(), OPSETS.map(String), name);
    t.true(!(runs && knownBug), `${name}: runs: true with a knownBug`);
    const files = [m.input, m.expected, ...Object.values(m.opsets).map((o) => o.file)];
    if (m.second) files.push(m.second.input, m.second.expected);
    for (const f of files) t.notThrows(() => fixture(f), f);
  }
});

const opsetsOf = (name: string) => OPSETS.filter((o) => manifest.networks[name]!.opsets[o] !== undefined);

for (const { name } of NETWORKS) {
  for (const opset of opsetsOf(name)) {
    // the fixture itself: onnxruntime gives PyTorch's output on the same file, in this process
    test(`onnxruntime-node: ${name} opset ${opset} equals PyTorch (fixture check)`, async (t) => {
      const m = manifest.networks[name]!;
      const x = await readNpy(fixture(m.input)),
        want = await readNpy(fixture(m.expected));
      const session = await ort.InferenceSession.create(fixture(m.opsets[opset]!.file), { intraOpNumThreads: 1 });
      try {
        const cases = [[x, want, m.output_shape] as const];
        if (m.second)
          cases.push([await readNpy(fixture(m.second.input)), await readNpy(fixture(m.second.expected)), m.second.output_shape]);
        for (const [xi, wi, shape] of cases) {
          const out = (await session.run({ input: new ort.Tensor("float32", xi.data as Float32Array, xi.shape) })).output!;
          t.deepEqual([...out.dims], shape);
          const d = scaleDiff(out.data as Float32Array, wi.data);
          t.true(d <= 1e-4, `input [${xi.shape}]: max |onnxruntime − PyTorch| is ${d} of max |PyTorch|`);
        }
      } finally {
        await session.release();
      }
    });
  }
}

for (const { name: backend } of backendsUnderTest()) {
  for (const { name, runs, knownBug, pathOnly } of NETWORKS) {
    for (const opset of opsetsOf(name)) {
      const m = manifest.networks[name]!;
      const title = `${backend}: ${name} opset ${opset}`;
      if (runs || knownBug) {
        const register = knownBug ? test.serial.failing : test.serial;
        register(
          `${title} ${pathOnly ? "from a path" : "from a path, a Buffer and a Uint8Array"} equals PyTorch${knownBug ? ` (known bug: ${knownBug})` : ""}`,
          async (t) => {
            setBackend(backend);
            const x = await readNpy(fixture(m.input)),
              want = await readNpy(fixture(m.expected));
            t.deepEqual(x.shape, m.input_shape);
            for (const [how, src] of sources(fixture(m.opsets[opset]!.file)).slice(0, pathOnly ? 1 : undefined)) {
              const model = await loadModel(src);
              const y = await model.run({ data: x.data as Float32Array, shape: x.shape });
              t.deepEqual(y.shape, m.output_shape, how);
              const d = scaleDiff(y.data, want.data);
              t.true(d <= 1e-4, `${how}: max |bhsd − PyTorch| is ${d} of max |PyTorch|`);
            }
            {
              // shape inference at load for the fixture's input shape (its spatial axes are symbolic in
              // the export): every value the run computes has the shape inferred for it
              const model = await loadModel(fixture(m.opsets[opset]!.file), { inputShapes: { input: x.shape } });
              await model.run({ data: x.data as Float32Array, shape: x.shape });
              const ran = model.lastRun!.shapes,
                inferred = model.valueShapes!;
              let compared = 0;
              for (const [v, s] of ran)
                if (inferred.has(v)) {
                  compared++;
                  t.deepEqual(inferred.get(v), s, `value ${v}`);
                }
              t.true(compared >= 0.95 * ran.size, `shapes inferred at load for ${compared} of the ${ran.size} values the run computed`);
              t.deepEqual(inferred.get(model.outputs[0]!), m.output_shape);
            }
            if (m.second) {
              // shapes computed in the graph (Shape → … → Reshape) follow the input: alternate two shapes on one model
              const x2 = await readNpy(fixture(m.second.input)),
                want2 = await readNpy(fixture(m.second.expected));
              const model = await loadModel(fixture(m.opsets[opset]!.file));
              for (const [i, [xi, wi, shape]] of [
                [x2, want2, m.second.output_shape],
                [x, want, m.output_shape],
                [x2, want2, m.second.output_shape],
              ].entries() as Iterable<[number, [typeof x, typeof x, number[]]]>) {
                const y = await model.run({ data: xi.data as Float32Array, shape: xi.shape });
                t.deepEqual(y.shape, shape, `run ${i + 1} of the alternating shapes`);
                const d = scaleDiff(y.data, wi.data);
                t.true(
                  d <= 1e-4,
                  `run ${i + 1} of the alternating shapes (input [${xi.shape}]): max |bhsd − PyTorch| is ${d} of max |PyTorch|`,
                );
              }
            }
          },
        );
      } else {
        test.serial(`${title} is refused at load from a path, a Buffer and a Uint8Array, naming the ops it cannot run`, async (t) => {
          setBackend(backend);
          const graphOps = new Set(Object.keys(m.opsets[opset]!.op_types));
          const x = await readNpy(fixture(m.input)),
            want = await readNpy(fixture(m.expected));
          for (const [how, src] of sources(fixture(m.opsets[opset]!.file))) {
            let model;
            try {
              model = await loadModel(src);
            } catch (e) {
              const msg = String((e as Error).message);
              const named = [...msg.matchAll(/op (\S+) is not supported/g)].map((r) => r[1]!);
              t.true(named.length > 0, `${how}: the refusal names no unsupported op: ${msg.slice(0, 500)}`);
              for (const op of named) t.true(graphOps.has(op), `${how}: names ${op}, which the graph does not contain`);
              continue;
            }
            // it loaded: say whether it runs right, so the entry can be flipped (or the engine fixed)
            let verdict: string;
            try {
              const y = await model.run({ data: x.data as Float32Array, shape: x.shape });
              const d = y.shape.join() === m.output_shape.join() ? scaleDiff(y.data, want.data) : Infinity;
              verdict =
                d <= 1e-4
                  ? `and equals PyTorch (${d}): set runs: true`
                  : `and answers WRONGLY (max difference ${d} of max |PyTorch|, shape [${y.shape}])`;
            } catch (e) {
              verdict = `and then run() throws: ${String((e as Error).message).slice(0, 300)}`;
            }
            t.fail(`${how}: loadModel accepted a runs: false network ${verdict}`);
          }
        });
      }
    }
  }
}

/**
 * Opsets 22–25 (PyTorch ≥ 2.9 exports up to 23 on request): they changed none of the supported
 * ops' meaning, so the opset-17 exports with their opset raised are the same models. onnxruntime
 * and bhsd must both give PyTorch's output on them; 26 is refused, and so is an op those opsets
 * added (RMSNormalization), by name.
 */
function withOpset(file: string, version: number, edit?: (g: { node: unknown[] }) => void): Uint8Array {
  const m = ModelProto.decode(readFileSync(fixture(file))) as unknown as {
    opsetImport: { domain?: string; version: number }[];
    irVersion: number;
    graph: { node: unknown[] };
  };
  m.opsetImport = [{ domain: "", version }];
  m.irVersion = 10;
  edit?.(m.graph);
  return ModelProto.encode(m as never).finish();
}
for (const name of ["resencunet", "segresnet", "attentionunet", "unetr"])
  test.serial(`opsets 22–25: ${name}'s opset-17 export with its opset raised equals PyTorch in onnxruntime and bhsd`, async (t) => {
    const m = manifest.networks[name]!;
    const x = await readNpy(fixture(m.input)),
      want = await readNpy(fixture(m.expected));
    for (const v of [22, 23, 24, 25]) {
      const bytes = withOpset(m.opsets[17]!.file, v);
      const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1 });
      const o = (await session.run({ input: new ort.Tensor("float32", x.data as Float32Array, x.shape) })).output!;
      await session.release();
      t.true(scaleDiff(o.data as Float32Array, want.data) <= 1e-4, `onnxruntime at opset ${v}`);
      for (const { name: backend } of backendsUnderTest().filter((b) => b.name !== "cuda")) {
        setBackend(backend);
        const y = await (await loadModel(bytes)).run({ data: x.data as Float32Array, shape: x.shape });
        const d = scaleDiff(y.data, want.data);
        t.true(d <= 1e-4, `${backend} at opset ${v}: max |bhsd − PyTorch| is ${d} of max |PyTorch|`);
      }
    }
  });

test("opset 26 is refused, and so is an op opset 23 added, by name", async (t) => {
  const file = manifest.networks.plainconvunet!.opsets[17]!.file;
  await t.throwsAsync(loadModel(withOpset(file, 26)), { message: /opset 26 is not supported \(bhsd runs opsets 11 to 25;/ });
  const rms = withOpset(file, 23, (g) => g.node.push({ name: "rms", opType: "RMSNormalization", input: ["input"], output: ["extra"] }));
  await t.throwsAsync(loadModel(rms), { message: /node rms \(RMSNormalization\): op RMSNormalization is not supported/ });
});
