/**
 * nnU-Net's PrimusV2 and PrimusV3 (Primus with a residual-block patch embedding) run from their
 * results folders. References: test/fixtures/nnunet-primus-deeper (make.py) — PyTorch's logits from
 * dynamic-network-architectures' own PrimusV2 / PrimusV3 on the saved checkpoints, and nnU-Net's
 * prediction on one window of the smoke CT.
 */
import test from "ava";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadNnunet, readNpy, segment, setBackend } from "../lib/index.js";
import { checkedFolder } from "./paths.js";
import { backendsUnderTest, pickleSpan, primusWindowCt, ROOT } from "./helpers.js";
import { labelsMatch, logitsWithin } from "./ort.js";

const DIR = join(ROOT, "test", "fixtures", "nnunet-primus-deeper");
const folder = (v: string) => join(DIR, "Dataset501_PhantomICH", `nnUNet_Primus${v}_Tiny_Trainer__nnUNetPlans__3d_fullres`);
const VARIANTS = [
  { tag: "v2", dir: folder("V2"), heads: 4, width: 48, levels: [32, 64, 128], nonlin: "relu", skips: 0 },
  { tag: "v3", dir: folder("V3"), heads: 3, width: 36, levels: [16, 24, 32], nonlin: "leakyrelu", skips: 3 },
] as const;
const backends = backendsUnderTest();
const { bytes: fixture, listed } = checkedFolder(DIR);
const npy = (name: string) => readNpy(fixture(`${name}.npy`));

test("the fixture folders' files are the ones make.py wrote", (t) => {
  t.true(listed.length >= 14);
  for (const f of listed) t.truthy(fixture(f), f);
});

for (const { name } of backends)
  for (const v of VARIANTS)
    test.serial(`${name}: Primus${v.tag.toUpperCase()} from its nnU-Net folder gives PyTorch's logits`, async (t) => {
      setBackend(name);
      const m = await loadNnunet(v.dir, { heads: v.heads });
      try {
        const a = m.architecture;
        if (a.networkClass !== "Primus" || a.embedding.kind !== "deeper") return t.fail(`built ${a.networkClass}`);
        t.is(a.embedDim, v.width);
        t.deepEqual(a.patchEmbed, [8, 8, 8]);
        t.deepEqual(
          a.embedding.levels.map((l) => l[0]!.cout),
          [...v.levels],
        );
        t.is(a.embedding.nonlin, v.nonlin);
        t.is(a.embedding.tokenSkips.length, v.skips);
        const [x, want] = await Promise.all([`primus${v.tag}_input`, `primus${v.tag}_logits`].map(npy));
        // (native's Winograd on the embedding's 3×3×3 convolutions: 1.6e-5 of scale here)
        await logitsWithin(t, m, x!, want!, 1e-4);
      } finally {
        m.dispose();
      }
    });

test.serial("segment() with PrimusV2 and V3 folders gives nnU-Net's labels on one window of the smoke CT", async (t) => {
  setBackend(backends.some((b) => b.name === "native") ? "native" : backends[0]!.name);
  const ct = await primusWindowCt();
  for (const v of VARIANTS) {
    const m = await loadNnunet(v.dir, { heads: v.heads });
    try {
      const { labels, report } = await segment(ct, m, { mirror: false, cleanup: false });
      t.is(report.windows, 1);
      const [ref, margin] = await Promise.all([`primus${v.tag}_window_labels`, `primus${v.tag}_window_margin`].map(npy));
      t.true(new Set(ref!.data as Uint8Array).size >= 3, "the reference is not one class everywhere");
      labelsMatch(t, labels.data, ref!.data, margin!.data);
    } finally {
      m.dispose();
    }
  }
});

test("PrimusV2 / V3 folders: the trainer's name gives the heads and the variant; refusals name the file", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-primus-deeper-"));
  try {
    cpSync(VARIANTS[1].dir, dir, { recursive: true });
    // a custom trainer's heads are not in the checkpoint
    await t.throwsAsync(loadNnunet(dir), {
      message: /nnUNet_PrimusV3_Tiny_Trainer builds a Primus whose number of attention heads the checkpoint does not hold/,
    });
    // nnU-Net's own trainer names give them (nnUNet_PrimusV3S_Trainer …), checked against the checkpoint's width and depth
    const ck = join(dir, "fold_0", "checkpoint_final.pth");
    const buf = readFileSync(ck);
    const { start, size, fixCrc } = pickleSpan(buf);
    const pkl = buf.subarray(start, start + size);
    const at = pkl.indexOf("nnUNet_PrimusV3_Tiny_Trainer");
    if (at < 0) return t.fail("fixture changed: no trainer name in data.pkl");
    pkl.write("nnUNet_PrimusV3S_Trainer_BS8", at, "latin1"); // (same length)
    fixCrc();
    writeFileSync(ck, buf);
    await t.throwsAsync(loadNnunet(dir), {
      message: /nnUNet_PrimusV3S_Trainer_BS8's Primus has width 396 and 12 blocks, the checkpoint 36 and 2; give its number of heads/,
    });
    // with its heads given it loads, a V3 by its name
    const m = await loadNnunet(dir, { heads: 3 });
    const a = m.architecture;
    t.true(a.networkClass === "Primus" && a.embedding.kind === "deeper" && a.embedding.variant === "V3");
    m.dispose();
    // a name that says V2 (ReLU) over V3's token projections: refused, not guessed
    pkl.write("nnUNet_PrimusV2S_Trainer_BS8", at, "latin1");
    fixCrc();
    writeFileSync(ck, buf);
    await t.throwsAsync(loadNnunet(dir, { heads: 3 }), {
      message:
        /checkpoint_final\.pth: trainer nnUNet_PrimusV2S_Trainer_BS8 names PrimusV2, whose patch embedding has no down_projection\.proj_to_tokens/,
    });
    // another name: V3's token projections tell
    pkl.write("nnUNet_MyDeeperPrimusTrainer", at, "latin1");
    fixCrc();
    writeFileSync(ck, buf);
    const m2 = await loadNnunet(dir, { heads: 3 });
    const a2 = m2.architecture;
    t.true(a2.networkClass === "Primus" && a2.embedding.kind === "deeper" && a2.embedding.nonlin === "leakyrelu");
    m2.dispose();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
