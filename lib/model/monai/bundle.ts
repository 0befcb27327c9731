/**
 * A MONAI bundle folder as MONAI's model zoo and `monai.bundle` lay it out: `configs/inference.json`
 * (or `.yaml` / `.yml`), `configs/metadata.json`, `models/model.pt`. The config is read as data —
 * MONAI's ConfigParser would run its `$` expressions as Python; bhsd never does: `@id` references
 * (`::` or the older `#` between keys) and `%` macros (`%id` or `%configs/other.json::id`, inside
 * the bundle) are replaced by the values they name, and an expression where bhsd needs a value is
 * an error naming the key. What bhsd reads: the `network_def`, and the inference pipeline
 * (pipeline.ts) as segment()'s config.
 */
import { existsSync } from "node:fs";
import { join, normalize, isAbsolute, sep } from "node:path";
import { CST, isScalar, Lexer, parseDocument, visit } from "yaml";
import type { ModelConfig } from "../config.js";
import { monaiError } from "./layers.js";
import { pipelineConfig, type KeepLargest } from "./pipeline.js";
import { brief } from "../../is.js";
import { readSmallFile } from "../../io/small-file.js";
import { leadsOutOf } from "../../paths.js";

export interface MonaiBundle {
  folder: string;
  /** The inference config read, relative to the folder. */
  configFile: string;
  /** The weights, relative to the folder (`models/model.pt`). */
  weights: string;
  /** The network_def, references replaced. */
  networkDef: Record<string, unknown>;
  /** segment()'s config from the bundle's preprocessing, inferer and postprocessing. */
  config: Partial<ModelConfig>;
  /** Each transform of the pipeline and what bhsd made of it, in order. */
  pipeline: string[];
  /** The postprocessing's KeepLargestConnectedComponent, where it has one. */
  keepLargest?: KeepLargest;
  /** configs/metadata.json's class names (network_data_format's outputs' channel_def), where given. */
  classes?: Record<string, string>;
  /** configs/metadata.json's name and version, where present. */
  name?: string;
  version?: string;
}

/** Config files bhsd reads (a bundle's are kilobytes). */
const MAX_CONFIG_BYTES = 4 << 20;
/** References followed within one value (a cycle or a chain this long is refused). */
const MAX_REF_DEPTH = 32;

/** Values one item may expand to, references followed (a bundle's network_def or pipeline is a few hundred). */
const MAX_VALUES = 100_000;
/**
 * Characters of strings and keys one item may expand to: a 3 MB string named 4000 times by
 * reference is one string in memory but 12 GB wherever the value is serialised (a message, `bhsd
 * info`'s JSON), which aborted the process. A config's own bytes are at most 4 MB.
 */
const MAX_CHARS = 16 << 20;
/** A reference's id: at most this long, and this many keys deep. */
const MAX_ID_CHARS = 256;
const MAX_ID_PARTS = 32;

/** A bundle's inference config, as configs/<one of these>. */
export const CONFIG_NAMES = ["inference.json", "inference.yaml", "inference.yml"];

async function readConfigFile(path: string, where: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = (await readSmallFile(path, { maxBytes: MAX_CONFIG_BYTES, what: "a bundle's config" })).toString("utf8");
  } catch (e) {
    throw monaiError(where, (e as Error).message);
  }
  let v: unknown;
  try {
    // (yaml's alias limit keeps a "billion laughs" document from expanding without bound)
    v = /\.ya?ml$/i.test(path) ? parseYamlConfig(text) : JSON.parse(text);
  } catch (e) {
    throw monaiError(where, `not valid ${/\.ya?ml$/i.test(path) ? "YAML" : "JSON"} (${(e as Error).message})`);
  }
  if (v === null || typeof v !== "object" || Array.isArray(v)) throw monaiError(where, "the config must be a mapping of ids to items");
  return v as Record<string, unknown>;
}

/** Deepest nesting of brackets and braces (YAML's flow collections), or of "- " items on one line, a config may have; MONAI's: 3 or 4. */
const MAX_FLOW_DEPTH = 64;
/** Widest indentation (block nesting) of a config's line; MONAI's: under 40 columns. */
const MAX_INDENT = 512;

/**
 * A YAML config as data. Flow collections nested past MAX_FLOW_DEPTH, as many "- " items on a
 * line, or lines indented past MAX_INDENT are refused before parsing (yaml's composer recursed
 * until the stack overflowed: 4 MB of "[" took 46 s and 3.6 GB, of "- " 10 s and 1.2 GB); a key
 * twice in one mapping is found with a set of each mapping's keys (yaml's own uniqueKeys check
 * compares each key with every earlier one: 40,000 keys held the event loop 41 s); aliases expand
 * at most 100 times (a "billion laughs" document).
 */
function parseYamlConfig(text: string): unknown {
  // (yaml's own lexer, linear and flat, tells brackets from quoted text: a scan of the characters
  // took an apostrophe in "it's" for a quote and stopped counting)
  let flow = 0,
    indicators = 0,
    indent = 0,
    lineStart = true,
    scalarNext = false;
  for (const tok of new Lexer().lex(text)) {
    if (scalarNext) {
      scalarNext = false; // a scalar's own text
      lineStart = false;
      continue;
    }
    const type = CST.tokenType(tok);
    if (type === "scalar") scalarNext = true;
    else if (type === "newline") {
      lineStart = true;
      indicators = 0;
      indent = 0;
      continue;
    } else if (type === "space" && lineStart) {
      if ((indent += tok.length) > MAX_INDENT) throw new Error(`a line is indented past ${MAX_INDENT} columns`);
      continue;
    } else if (type === "flow-seq-start" || type === "flow-map-start") {
      if (++flow > MAX_FLOW_DEPTH) throw new Error(`brackets or braces nest deeper than ${MAX_FLOW_DEPTH}`);
    } else if (type === "flow-seq-end" || type === "flow-map-end") {
      // (a closer with nothing open, or a flow error, is invalid YAML: refused here, since yaml's
      // messages for thousands of such errors cost quadratic time)
      if (--flow < 0) throw new Error("a closing bracket or brace with none open");
    } else if (type === "flow-error-end") throw new Error("a flow collection that is not valid YAML");
    else if (type === "seq-item-ind" || type === "explicit-key-ind") {
      if (++indicators > MAX_FLOW_DEPTH) throw new Error(`a line opens more than ${MAX_FLOW_DEPTH} nested "-" or "?" items`);
    }
    lineStart = false;
  }
  // (prettyErrors off: yaml otherwise rebuilds every error's message with its line's context)
  const doc = parseDocument(text, { uniqueKeys: false, prettyErrors: false });
  if (doc.errors.length) {
    const e = doc.errors[0]!;
    throw new Error(`${e.message.slice(0, 200)} at byte ${e.pos[0]}`);
  }
  visit(doc, {
    Map(_, map) {
      const keys = new Set<string>();
      for (const item of map.items) {
        if (!isScalar(item.key)) continue;
        const k = String(item.key.value);
        if (keys.has(k)) throw new Error(`map keys must be unique; "${k.slice(0, 60)}" is repeated`);
        keys.add(k);
      }
    },
  });
  return doc.toJS({ maxAliasCount: 100 });
}

/**
 * Refuses a file of the bundle that is a link leading out of it (the bundle's own files are read,
 * nothing else); `rel` is relative to the folder. A file that does not exist passes (its reader says so).
 */
export async function insideBundle(folder: string, rel: string, what = `${rel}`): Promise<void> {
  if (await leadsOutOf(folder, join(folder, rel))) throw monaiError(join(folder, rel), `${what} leads out of the bundle (a link)`);
}

/** Resolves references and macros in a bundle's config (the files it names are read on demand, inside the bundle). */
export class BundleConfig {
  private readonly files = new Map<string, Record<string, unknown>>();
  /** Values visited by the current get(): references may name one item many times, each copy counts. */
  private budget = 0;
  /** Characters of the strings and keys of the current get()'s value, each copy counted. */
  private chars = 0;
  constructor(
    readonly folder: string,
    readonly configFile: string,
    root: Record<string, unknown>,
  ) {
    this.files.set(configFile, root);
  }

  static async open(folder: string, configFile: string): Promise<BundleConfig> {
    await insideBundle(folder, configFile);
    return new BundleConfig(folder, configFile, await readConfigFile(join(folder, configFile), join(folder, configFile)));
  }

  private where(file: string, id: string) {
    return `${join(this.folder, file)} (${id || "the root"})`;
  }

  /** The raw item at `id` ("a::b::0" or "a#b#0") of a config file, or undefined. */
  private raw(file: string, id: string): unknown {
    let v: unknown = this.files.get(file);
    if (id === "") return v;
    const parts = id.replace(/#/g, "::").split("::");
    // (each step of an id's walk counts against the expansion budget: long ids are work too)
    this.budget -= parts.length;
    if (id.length > MAX_ID_CHARS || parts.length > MAX_ID_PARTS)
      throw monaiError(join(this.folder, file), `a reference names an id longer than ${MAX_ID_CHARS} characters or ${MAX_ID_PARTS} keys`);
    for (const k of parts) {
      if (Array.isArray(v) && /^\d+$/.test(k)) v = v[Number(k)];
      else if (v !== null && typeof v === "object" && !Array.isArray(v) && Object.hasOwn(v, k)) v = (v as Record<string, unknown>)[k];
      else return undefined;
    }
    return v;
  }

  private async fileOf(rel: string, from: string): Promise<string> {
    if (!rel) return from;
    const n = normalize(rel);
    if (isAbsolute(rel) || n.startsWith("..") || n.split(sep).includes("..") || !/\.(json|ya?ml)$/i.test(n))
      throw monaiError(this.where(from, ""), `a macro names ${brief(rel)}: only a JSON or YAML file inside the bundle is read`);
    if (!this.files.has(n)) {
      if (this.files.size >= 16) throw monaiError(this.where(from, ""), "macros name more than 16 config files");
      await insideBundle(this.folder, n, `a macro names ${brief(rel)}, which`);
      this.files.set(n, await readConfigFile(join(this.folder, n), join(this.folder, n)));
    }
    return n;
  }

  /**
   * The item at `id`, references and macros replaced throughout (`$` expressions are left as
   * strings); undefined where there is none.
   */
  async get(id: string, file = this.configFile): Promise<unknown> {
    this.budget = MAX_VALUES;
    this.chars = MAX_CHARS;
    return this.resolve(this.raw(file, id), file, id, 0, new Set([`${file}|${id}`]));
  }

  private async resolve(v: unknown, file: string, id: string, depth: number, seen: Set<string>): Promise<unknown> {
    if (depth > MAX_REF_DEPTH) throw monaiError(this.where(file, id), `references nest deeper than ${MAX_REF_DEPTH}`);
    if (--this.budget < 0) throw monaiError(this.where(file, id), `references expand to more than ${MAX_VALUES} values`);
    if (typeof v === "string") {
      // a whole-value reference "@a::b", or a macro "%a::b" / "%configs/other.json::a::b" (`#` the older separator)
      let target: string | undefined, tid: string | undefined;
      if (/^@[\w:#]*$/.test(v)) {
        target = file;
        tid = v.slice(1);
      } else if (v.startsWith("%")) {
        const rest = v.slice(1);
        const m = /::|#/.exec(rest);
        const f = m ? rest.slice(0, m.index) : "";
        tid = m ? rest.slice(m.index + m[0].length) : rest;
        if (!/^[\w:#]*$/.test(tid)) throw monaiError(this.where(file, id), `macro ${brief(v)} names no item`);
        target = await this.fileOf(f, file);
      }
      if (target !== undefined && tid !== undefined) {
        tid = tid.replace(/#/g, "::");
        const key = `${target}|${tid}`;
        if (seen.has(key)) throw monaiError(this.where(file, id), `${v} refers back to itself`);
        const r = this.raw(target, tid);
        if (r === undefined) throw monaiError(this.where(file, id), `${v} names no item of ${target}`);
        return this.resolve(r, target, tid, depth + 1, new Set([...seen, key]));
      }
      this.spend(v.length, file, id);
      return v;
    }
    if (Array.isArray(v)) {
      if (v.length > 4096) throw monaiError(this.where(file, id), "a list of more than 4096 items");
      const out = [];
      for (const [i, x] of v.entries()) out.push(await this.resolve(x, file, `${id}::${i}`, depth + 1, seen));
      return out;
    }
    if (v !== null && typeof v === "object") {
      const out: Record<string, unknown> = {};
      // (defined, not assigned: a key "__proto__" is a key like any other)
      for (const [k, x] of Object.entries(v)) {
        this.spend(k.length, file, id);
        Object.defineProperty(out, k, {
          value: await this.resolve(x, file, id ? `${id}::${k}` : k, depth + 1, seen),
          enumerable: true,
          writable: true,
          configurable: true,
        });
      }
      return out;
    }
    return v;
  }

  private spend(chars: number, file: string, id: string): void {
    if ((this.chars -= chars) < 0)
      throw monaiError(
        this.where(file, id),
        `references expand to more than ${MAX_CHARS} characters of text (a long string named many times)`,
      );
  }
}

/** Reads a bundle folder: its inference config, network_def and pipeline. */
export async function readBundle(folder: string): Promise<MonaiBundle> {
  const cfgName = CONFIG_NAMES.find((n) => existsSync(join(folder, "configs", n)));
  if (!cfgName)
    throw new Error(
      `MONAI bundle ${folder}: no configs/inference.json (or .yaml) — a bundle folder holds configs/ and models/; a checkpoint file is loaded with options.network`,
    );
  const configFile = join("configs", cfgName);
  const cfg = await BundleConfig.open(folder, configFile);
  let def = await cfg.get("network_def");
  if (def === undefined) {
    const net = await cfg.get("network");
    if (net !== null && typeof net === "object" && !Array.isArray(net) && "_target_" in net) def = net;
  }
  if (def === null || typeof def !== "object" || Array.isArray(def))
    throw monaiError(
      join(folder, configFile),
      def === undefined ? "no network_def (nor a network with a _target_)" : `network_def is ${brief(def)}, not a network's definition`,
    );
  const weights = join("models", "model.pt");
  const { config, pipeline, keepLargest } = await pipelineConfig(cfg);
  let name: string | undefined, version: string | undefined, classes: Record<string, string> | undefined;
  const metaPath = join(folder, "configs", "metadata.json");
  if (existsSync(metaPath)) {
    await insideBundle(folder, join("configs", "metadata.json"));
    const meta = await readConfigFile(metaPath, metaPath).catch(() => null);
    if (typeof meta?.name === "string") name = meta.name;
    if (typeof meta?.version === "string") version = meta.version;
    // network_data_format.outputs.pred.channel_def: { "0": "background", "1": "spleen" }
    const outputs = (meta?.network_data_format as Record<string, unknown> | undefined)?.outputs as Record<string, unknown> | undefined;
    const def = (outputs?.pred as Record<string, unknown> | undefined)?.channel_def;
    if (def && typeof def === "object" && !Array.isArray(def)) {
      const entries = Object.entries(def as Record<string, unknown>);
      if (entries.length && entries.length <= 256 && entries.every(([k, v]) => /^\d+$/.test(k) && typeof v === "string"))
        classes = Object.fromEntries(entries.map(([k, v]) => [String(Number(k)), (v as string).slice(0, 200)]));
    }
  }
  return {
    folder,
    configFile,
    weights,
    networkDef: def as Record<string, unknown>,
    config,
    pipeline,
    ...(keepLargest ? { keepLargest } : {}),
    ...(classes ? { classes } : {}),
    ...(name !== undefined ? { name } : {}),
    ...(version !== undefined ? { version } : {}),
  };
}
