/**
 * ONNX local functions, inlined at load. The fixtures are MONAI's DynUNet exported by PyTorch
 * 1.13 with `export_modules_as_functions` (its residual and up-sampling blocks as functions, the
 * blocks' Conv strides as attributes the calls pass by reference), and the same model with each
 * residual block's call wrapped in a second function (test/fixtures/functions/make_fixtures.py):
 * bhsd must give PyTorch's output, as onnxruntime does, and refuse at once, naming the reason, a
 * model whose functions call themselves, nest too deep, blow up, or do not fit their calls.
 */
import test from "ava";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import ort from "onnxruntime-node";
import { loadModel, readNpy, setBackend } from "../lib/index.js";
import { MAX_DEPTH, MAX_INLINED_BYTES, MAX_NODES } from "../lib/model/functions.js";
import { parseModel } from "../lib/model/graph.js";
import { ModelProto } from "../lib/model/onnx-proto.js";
import { backendsUnderTest, ROOT } from "./helpers.js";
import { checkedFolder } from "./paths.js";
import { randomTensor, scaleDiff } from "./ort.js";

const { file: fixture } = checkedFolder(join(ROOT, "test", "fixtures", "functions"));

const FILES = ["blocks.onnx", "nested.onnx"] as const;
/** A second shape (the export's spatial axes are dynamic): onnxruntime's output is the reference there. */
const SECOND = randomTensor([1, 1, 16, 8, 16], 5);

async function ortRun(model: string | Uint8Array, x: { data: Float32Array; shape: number[] }): Promise<Float32Array> {
  const session = await ort.InferenceSession.create(model as string, { intraOpNumThreads: 1 });
  try {
    return (await session.run({ input: new ort.Tensor("float32", x.data, x.shape) })).output!.data as Float32Array;
  } finally {
    await session.release();
  }
}

for (const file of FILES) {
  test(`onnxruntime-node: ${file} equals PyTorch (fixture check)`, async (t) => {
    const x = await readNpy(fixture("input.npy")),
      want = await readNpy(fixture("expected.npy"));
    t.true(scaleDiff(await ortRun(fixture(file), { data: x.data as Float32Array, shape: x.shape }), want.data) <= 1e-4);
  });
  for (const { name: backend } of backendsUnderTest())
    test.serial(`${backend}: ${file} from a path and from bytes equals PyTorch, and onnxruntime at a second shape`, async (t) => {
      setBackend(backend);
      const x = await readNpy(fixture("input.npy")),
        want = await readNpy(fixture("expected.npy"));
      for (const src of [fixture(file), readFileSync(fixture(file))]) {
        const model = await loadModel(src);
        t.false(
          (await parseModel(src)).nodes.some((n) => n.opType.startsWith("Unet")),
          "no call is left in the graph",
        );
        const y = await model.run({ data: x.data as Float32Array, shape: x.shape });
        t.deepEqual(y.shape, want.shape);
        const d = scaleDiff(y.data, want.data);
        t.true(d <= 1e-4, `max |bhsd − PyTorch| is ${d} of max |PyTorch|`);
        const y2 = await model.run(SECOND);
        const d2 = scaleDiff(y2.data, await ortRun(fixture(file), SECOND));
        t.true(d2 <= 1e-4, `second shape: max |bhsd − onnxruntime| is ${d2}`);
      }
    });
}

// ---- models that do not fit: blocks.onnx with its functions rewritten ----

type Attr = { name: string; refAttrName?: string; type?: number; ints?: number[] };
type Node = { name?: string; opType: string; domain?: string; input: string[]; output: string[]; attribute: Attr[] };
type Fn = {
  name: string;
  domain: string;
  input: string[];
  output: string[];
  node: Node[];
  attribute: string[];
  opsetImport: { domain: string; version: number }[];
};
type Model = { functions: Fn[]; graph: { node: Node[] } };
function edited(edit: (m: Model) => void): Uint8Array {
  const m = ModelProto.decode(readFileSync(fixture("blocks.onnx"))) as unknown as Model;
  edit(m);
  return ModelProto.encode(m as never).finish();
}
const fn = (m: Model, name: string) => m.functions.find((f) => f.name === name)!;

test("a model whose functions call themselves, nest too deep, blow up or do not fit their calls is refused at once", async (t) => {
  const dom = (m: Model) => fn(m, "UnetUpBlock").domain;
  const cases: [string, (m: Model) => void, RegExp][] = [
    [
      "a function calling itself through another",
      (m) => {
        const up = fn(m, "UnetUpBlock"),
          res = fn(m, "UnetResBlock");
        up.node.push({ opType: "UnetResBlock", domain: res.domain, input: [up.input[0]!], output: ["loop"], attribute: [] });
        res.node.push({ opType: "UnetUpBlock", domain: up.domain, input: [res.input[0]!], output: ["loop2"], attribute: [] });
      },
      /calls function .*Unet(Up|Res)Block, which calls itself \(Unet(UpBlock → UnetResBlock → UnetUpBlock|ResBlock → UnetUpBlock → UnetResBlock)\)/,
    ],
    [
      `a chain of ${MAX_DEPTH + 8} functions`,
      (m) => {
        for (let k = 0; k < MAX_DEPTH + 8; k++)
          m.functions.push({
            name: `chain${k}`,
            domain: dom(m),
            input: ["x"],
            output: ["y"],
            attribute: [],
            opsetImport: [],
            node: [
              k
                ? { opType: `chain${k - 1}`, domain: dom(m), input: ["x"], output: ["y"], attribute: [] }
                : { opType: "Relu", input: ["x"], output: ["y"], attribute: [] },
            ],
          });
        m.graph.node.push({
          name: "top",
          opType: `chain${MAX_DEPTH + 7}`,
          domain: dom(m),
          input: ["input"],
          output: ["spare"],
          attribute: [],
        });
      },
      new RegExp(`nested more than ${MAX_DEPTH} deep`),
    ],
    [
      "each of 24 functions calling the next twice (2^24 nodes)",
      (m) => {
        for (let k = 0; k < 24; k++)
          m.functions.push({
            name: `twice${k}`,
            domain: dom(m),
            input: ["x"],
            output: ["y"],
            attribute: [],
            opsetImport: [],
            node: k
              ? [
                  { opType: `twice${k - 1}`, domain: dom(m), input: ["x"], output: ["a"], attribute: [] },
                  { opType: `twice${k - 1}`, domain: dom(m), input: ["a"], output: ["y"], attribute: [] },
                ]
              : [{ opType: "Relu", input: ["x"], output: ["y"], attribute: [] }],
          });
        m.graph.node.push({ name: "top", opType: "twice23", domain: dom(m), input: ["input"], output: ["spare"], attribute: [] });
      },
      new RegExp(`its functions expand to more than ${MAX_NODES} nodes`),
    ],
    [
      "a function of another opset",
      (m) => (fn(m, "UnetUpBlock").opsetImport = [{ domain: "", version: 13 }]),
      /calls function .*UnetUpBlock, which imports ONNX opset 13 while the model imports 17/,
    ],
    [
      "a call with more inputs than the function takes",
      (m) => m.graph.node.find((n) => n.opType === "UnetUpBlock")!.input.push("input"),
      /calls function .*UnetUpBlock with 10 inputs; it takes 9/,
    ],
    ["a function defined twice", (m) => m.functions.push({ ...fn(m, "UnetUpBlock") }), /function .*UnetUpBlock is defined twice/],
    [
      "a call of a function the model does not define",
      (m) => (m.functions = m.functions.filter((f) => f.name !== "UnetUpBlock")),
      /domain "monai\.networks\.blocks\.dynunet_block" is not supported/,
    ],
  ];
  for (const [what, edit, msg] of cases) {
    const t0 = performance.now();
    const e = await t.throwsAsync(loadModel(edited(edit)), undefined, what);
    t.regex(e?.message ?? "", msg, what);
    t.true(performance.now() - t0 < 10_000, `${what}: refused in ${Math.round(performance.now() - t0)} ms`);
  }
});

test.serial(
  "attributes the body refers to come from the call, else the function's default, else are left out, as onnxruntime does",
  async (t) => {
    setBackend("ts");
    // LeakyRelu's alpha by reference: given by the call (0.05), the function's default (0.3), or
    // neither (LeakyRelu's own default, 0.01)
    const leaky = (ref: string) => ({
      opType: "LeakyRelu",
      input: ["x"],
      output: ["y"],
      attribute: [{ name: "alpha", refAttrName: ref, type: 1 }],
    });
    const fns = [
      {
        name: "WithDefault",
        domain: "t",
        input: ["x"],
        output: ["y"],
        attribute: [],
        attributeProto: [{ name: "a", type: 1, f: 0.3 }],
        node: [leaky("a")],
        opsetImport: [{ domain: "", version: 17 }],
      },
      {
        name: "NoDefault",
        domain: "t",
        input: ["x"],
        output: ["y"],
        attribute: ["b"],
        node: [leaky("b")],
        opsetImport: [{ domain: "", version: 17 }],
      },
    ];
    const call = (op: string, i: string, o: string, attribute: unknown[] = []) => ({
      name: o,
      opType: op,
      domain: "t",
      input: [i],
      output: [o],
      attribute,
    });
    const vi = (name: string) => ({ name, type: { tensorType: { elemType: 1, shape: { dim: [{ dimValue: 2 }, { dimValue: 5 }] } } } });
    const bytes = ModelProto.encode(
      ModelProto.fromObject({
        irVersion: 8,
        opsetImport: [
          { domain: "", version: 17 },
          { domain: "t", version: 1 },
        ],
        functions: fns,
        graph: {
          name: "g",
          input: [vi("input")],
          output: [vi("given"), vi("default"), vi("neither")],
          node: [
            call("WithDefault", "input", "given", [{ name: "a", type: 1, f: 0.05 }]),
            call("WithDefault", "input", "default"),
            call("NoDefault", "input", "neither"),
          ],
        },
      }),
    ).finish();
    const x = randomTensor([2, 5], 9);
    const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1 });
    const want = await session.run({ input: new ort.Tensor("float32", x.data, x.shape) });
    await session.release();
    const model = await loadModel(bytes);
    const got = await model.runAll({ input: x });
    const negative = x.data.findIndex((v) => v < 0);
    for (const [name, alpha] of [
      ["given", 0.05],
      ["default", 0.3],
      ["neither", 0.01],
    ] as const) {
      t.true(scaleDiff(got[name]!.data, want[name]!.data as Float32Array) <= 1e-6, name);
      t.is(Math.fround(got[name]!.data[negative]!), Math.fround(Math.fround(alpha) * x.data[negative]!), `${name}: alpha ${alpha}`);
    }
  },
);

test("a node of 50 000 inputs copied by a chain of calls is refused by the bytes it would take, at once", async (t) => {
  const dom = "t";
  const wide = Array.from({ length: 50_000 }, (_, i) => `input_value_${i}`);
  const functions = Array.from({ length: 17 }, (_, k) => ({
    name: `f${k}`,
    domain: dom,
    input: ["x"],
    output: ["y"],
    opsetImport: [{ domain: "", version: 17 }],
    node: k
      ? [
          { opType: `f${k - 1}`, domain: dom, input: ["x"], output: ["a"] },
          { opType: `f${k - 1}`, domain: dom, input: ["a"], output: ["y"] },
        ]
      : [{ opType: "Sum", input: ["x", ...wide.map(() => "x")], output: ["y"] }],
  }));
  const bytes = ModelProto.encode(
    ModelProto.fromObject({
      irVersion: 8,
      opsetImport: [
        { domain: "", version: 17 },
        { domain: dom, version: 1 },
      ],
      functions,
      graph: {
        name: "g",
        input: [{ name: "input", type: { tensorType: { elemType: 1, shape: { dim: [{ dimValue: 2 }] } } } }],
        output: [{ name: "out", type: { tensorType: { elemType: 1 } } }],
        node: [{ name: "top", opType: "f16", domain: dom, input: ["input"], output: ["out"] }],
      },
    }),
  ).finish();
  t.true(bytes.length < 400_000, `${bytes.length} bytes of model`);
  const t0 = performance.now();
  await t.throwsAsync(loadModel(bytes), {
    message: new RegExp(`its functions expand to nodes of more than ${MAX_INLINED_BYTES / 2 ** 20} MiB`),
  });
  t.true(performance.now() - t0 < 10_000);
});

test.serial("a Constant held in a function called twice is one tensor (read once when its data is external)", async (t) => {
  setBackend("ts");
  const root = mkdtempSync(join(tmpdir(), "bhsd-fn-"));
  try {
    const c = new Float32Array([0.5, -1.25, 2, 4]);
    writeFileSync(join(root, "c.data"), new Uint8Array(c.buffer));
    const vi = (name: string) => ({ name, type: { tensorType: { elemType: 1, shape: { dim: [{ dimValue: 4 }] } } } });
    const bytes = ModelProto.encode(
      ModelProto.fromObject({
        irVersion: 8,
        opsetImport: [
          { domain: "", version: 17 },
          { domain: "t", version: 1 },
        ],
        functions: [
          {
            name: "AddC",
            domain: "t",
            input: ["x"],
            output: ["y"],
            opsetImport: [{ domain: "", version: 17 }],
            node: [
              {
                opType: "Constant",
                output: ["c"],
                attribute: [
                  {
                    name: "value",
                    type: 4,
                    t: {
                      dims: [4],
                      dataType: 1,
                      dataLocation: 1,
                      externalData: [
                        { key: "location", value: "c.data" },
                        { key: "length", value: "16" },
                      ],
                    },
                  },
                ],
              },
              { opType: "Add", input: ["x", "c"], output: ["y"] },
            ],
          },
        ],
        graph: {
          name: "g",
          input: [vi("input")],
          output: [vi("out")],
          node: [
            { name: "one", opType: "AddC", domain: "t", input: ["input"], output: ["mid"] },
            { name: "two", opType: "AddC", domain: "t", input: ["mid"], output: ["out"] },
          ],
        },
      }),
    ).finish();
    writeFileSync(join(root, "m.onnx"), bytes);
    const x = new Float32Array([1, 2, 3, 4]);
    const y = await (await loadModel(join(root, "m.onnx"))).run({ data: x, shape: [4] });
    t.deepEqual(
      [...y.data],
      [...x].map((v, i) => v + 2 * c[i]!),
    );
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
