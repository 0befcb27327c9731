/**
 * ONNX local functions (ModelProto.functions), inlined at load: a node whose domain and op name
 * are a function's is replaced by the function's body, its formal inputs and outputs bound to the
 * call's, every other value given a name of its own, and attributes the body refers to
 * (`ref_attr_name`) taken from the call or the function's defaults (left out, as ONNX says, where
 * neither has one). PyTorch writes such models: the TorchScript exporter with
 * `export_modules_as_functions`, `torch.onnx.dynamo_export` (2.1–2.5), the dynamo exporter for
 * subgraphs. Bounded for a hostile model: a function that calls itself is refused, nesting is at
 * most {@link MAX_DEPTH} deep and the inlined graph at most {@link MAX_NODES} nodes (counting the
 * calls expanded, so a chain of functions each calling the next twice stops early) and
 * {@link MAX_INLINED_BYTES} of names, lists and tensors.
 */

type Attribute = Record<string, unknown> & { name?: string; refAttrName?: string };
type Node = Record<string, unknown> & {
  input?: string[];
  output?: string[];
  name?: string;
  opType?: string;
  domain?: string;
  overload?: string;
  attribute?: Attribute[];
};
type Fn = {
  name?: string;
  domain?: string;
  overload?: string;
  input?: string[];
  output?: string[];
  attribute?: string[];
  attributeProto?: Attribute[];
  node?: Node[];
  opsetImport?: { domain?: string; version?: number }[];
};

/** Deepest nesting of function calls. */
export const MAX_DEPTH = 32;
/** Most nodes (and calls expanded) one model's graph may come to. */
export const MAX_NODES = 1 << 18;
/**
 * Most bytes the inlined nodes may take, reckoned from their names, lists and tensors (a few
 * nodes with 50 000 inputs each, copied 2^17 times by a chain of calls, would otherwise fill the
 * memory from a 150 KB file).
 */
export const MAX_INLINED_BYTES = 2 ** 28;

/** About what one node takes in memory: its names, attribute lists and tensors. */
function weight(n: Node): number {
  let w = 64 + String(n.name ?? "").length;
  for (const v of n.input ?? []) w += 16 + v.length;
  for (const v of n.output ?? []) w += 16 + v.length;
  for (const a of n.attribute ?? []) {
    w += 32 + String(a.name ?? "").length;
    for (const k of ["ints", "floats", "strings"]) w += 8 * ((a[k] as unknown[] | undefined)?.length ?? 0);
    w += (a.s as Uint8Array | undefined)?.length ?? 0;
    const t = a.t as { dims?: unknown[]; rawData?: Uint8Array } | undefined;
    if (t) w += Math.max(t.rawData?.length ?? 0, 4 * (t.dims ?? []).reduce((p: number, d) => p * Number(d), 1));
  }
  return w;
}

const standard = (domain: string | undefined) => !domain || domain === "ai.onnx";
const keyOf = (domain: string | undefined, name: string | undefined, overload: string | undefined) =>
  `${domain ?? ""}\u0000${name ?? ""}\u0000${overload ?? ""}`;
const shown = (domain: string | undefined, name: string | undefined) => `${domain ? domain + "." : ""}${name ?? ""}`;

/**
 * Replaces the calls of `m.graph.node` (a decoded ModelProto) by the bodies of the model's
 * functions; `opset` is the model's ai.onnx opset, `label` names the model in errors.
 */
export function inlineFunctions(m: Record<string, unknown>, opset: number, label: string): void {
  const fns = (m.functions as Fn[] | undefined) ?? [];
  if (fns.length === 0) return;
  const g = m.graph as Record<string, unknown> & { node: Node[] };
  const table = new Map<string, Fn>();
  for (const f of fns) {
    const key = keyOf(f.domain, f.name, f.overload);
    if (table.has(key)) throw new Error(`${label}: function ${shown(f.domain, f.name)} is defined twice`);
    table.set(key, f);
  }
  // the graph's own names, which no name made for a function's inner values may take
  const taken = new Set<string>();
  for (const k of ["input", "output", "initializer", "valueInfo"])
    for (const v of (g[k] as { name?: string }[] | undefined) ?? []) taken.add(String(v.name ?? ""));
  for (const n of g.node) for (const v of [...(n.input ?? []), ...(n.output ?? [])]) taken.add(v);

  const out: Node[] = [];
  let visited = 0,
    calls = 0,
    bytes = 0;
  const expand = (n: Node, stack: string[]): void => {
    if (++visited > MAX_NODES)
      throw new Error(`${label}: its functions expand to more than ${MAX_NODES} nodes; bhsd does not inline a graph that large`);
    if ((bytes += weight(n)) > MAX_INLINED_BYTES)
      throw new Error(
        `${label}: its functions expand to nodes of more than ${MAX_INLINED_BYTES / 2 ** 20} MiB; bhsd does not inline a graph that large`,
      );
    const key = keyOf(n.domain, n.opType, n.overload);
    const f = standard(n.domain) ? undefined : table.get(key);
    if (!f) {
      out.push(n);
      return;
    }
    const name = shown(f.domain, f.name);
    const where = `${label}: node ${n.name || "(unnamed)"} calls function ${name}`;
    if (stack.includes(key))
      throw new Error(`${where}, which calls itself (${[...stack.map((s) => s.split("\u0000")[1]), f.name].join(" → ")})`);
    if (stack.length >= MAX_DEPTH) throw new Error(`${where} nested more than ${MAX_DEPTH} deep`);
    const own = (f.opsetImport ?? []).find((o) => standard(o.domain))?.version;
    if (own !== undefined && Number(own) !== opset)
      throw new Error(
        `${where}, which imports ONNX opset ${own} while the model imports ${opset}; bhsd inlines functions of the model's opset only`,
      );
    const formalIn = f.input ?? [],
      formalOut = f.output ?? [],
      actualIn = n.input ?? [],
      actualOut = n.output ?? [];
    if (actualIn.length > formalIn.length) throw new Error(`${where} with ${actualIn.length} inputs; it takes ${formalIn.length}`);
    if (actualOut.length > formalOut.length) throw new Error(`${where} for ${actualOut.length} outputs; it makes ${formalOut.length}`);
    const prefix = `${n.name || name}::${calls++}/`;
    const bound = new Map<string, string>();
    formalIn.forEach((p, k) => bound.set(p, actualIn[k] ?? ""));
    formalOut.forEach((p, k) => {
      if (actualOut[k]) bound.set(p, actualOut[k]!);
    });
    const rename = (v: string): string => {
      if (v === "") return "";
      const b = bound.get(v);
      if (b !== undefined) return b;
      const inner = prefix + v;
      if (taken.has(inner)) throw new Error(`${where}: the name ${inner} made for its value ${v} is already the graph's`);
      return inner;
    };
    const given = new Map((n.attribute ?? []).map((a) => [String(a.name ?? ""), a]));
    const defaults = new Map((f.attributeProto ?? []).map((a) => [String(a.name ?? ""), a]));
    const within = [...stack, key];
    (f.node ?? []).forEach((b, k) => {
      const attribute: Attribute[] = [];
      for (const a of b.attribute ?? []) {
        if (!a.refAttrName) attribute.push(a);
        else {
          const v = given.get(a.refAttrName) ?? defaults.get(a.refAttrName);
          if (v) attribute.push({ ...v, name: a.name, refAttrName: undefined });
        }
      }
      expand(
        {
          ...b,
          name: prefix + (b.name || `#${k}`),
          input: (b.input ?? []).map(rename),
          output: (b.output ?? []).map(rename),
          attribute,
        },
        within,
      );
    });
  };
  for (const n of g.node) expand(n, []);
  g.node = out;
}
