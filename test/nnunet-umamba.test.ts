/**
 * U-Mamba (bowang-lab/U-Mamba) trained by its nnU-Net v2 trainers: UMambaBot and UMambaEnc, 3-D
 * and 2-D, read from the weights and the plans' strides, against U-Mamba's own classes over
 * mamba_ssm's Mamba and its reference scan in PyTorch, run by test/fixtures/nnunet-umamba/make.py.
 */
import test from "ava";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { activeBackend } from "../lib/backends/index.js";
import { loadNnunet, readNpy, segment, setBackend, volumeFromArray, type UMambaArchitecture } from "../lib/index.js";
import { runMambaConv, runSelectiveScan } from "../lib/model/mamba.js";
import { checkedFolder } from "./paths.js";
import { backendsUnderTest, bhsdSync, ROOT } from "./helpers.js";
import { labelsMatch, logitsWithin } from "./ort.js";

const DIR = join(ROOT, "test", "fixtures", "nnunet-umamba");
const folder = (trainer: string, conf: string) => join(DIR, "Dataset501_PhantomICH", `nnUNetTrainerUMamba${trainer}__nnUNetPlans__${conf}`);
const CASES = [
  ["bot_3d_fullres", folder("Bot", "3d_fullres")],
  ["enc_3d_fullres", folder("Enc", "3d_fullres")],
  ["bot_2d", folder("Bot", "2d")],
  ["enc_2d", folder("Enc", "2d")],
] as const;
const backends = backendsUnderTest();
const { bytes: fixture, listed } = checkedFolder(DIR);
const npy = (name: string) => readNpy(fixture(`${name}.npy`));

const umamba = (a: { networkClass: string }): UMambaArchitecture => {
  if (a.networkClass !== "UMamba") throw new Error(`a ${a.networkClass}, not U-Mamba`);
  return a as UMambaArchitecture;
};

test("the fixture folders' files are the ones make.py wrote", (t) => {
  t.true(listed.length >= 23);
  for (const f of listed) t.truthy(fixture(f), f);
});

test("loadNnunet reads U-Mamba's folders: widths, depths and Mamba layers from the weights, strides from the plans", async (t) => {
  const [bot3, enc3, bot2, enc2] = await Promise.all(CASES.map(([, f]) => loadNnunet(f)));
  try {
    const a = umamba(bot3!.architecture),
      b = umamba(enc3!.architecture),
      c = umamba(bot2!.architecture),
      d = umamba(enc2!.architecture);
    t.deepEqual([a.variant, b.variant, c.variant, d.variant], ["Bot", "Enc", "Bot", "Enc"]);
    t.deepEqual([a.dims, c.dims], [3, 2]);
    t.deepEqual(a.features, [4, 8, 16, 16, 16]);
    t.deepEqual(a.strides[1], [1, 2, 2]);
    // UMambaBot: one Mamba, after the last stage, over its 16 channels
    t.deepEqual(
      a.mamba.map((m) => m && [m.model, m.inner, m.state, m.rank, m.kernel]),
      [null, null, null, null, [16, 32, 16, 1, 4]],
    );
    // the second half's stages have one block (UMambaBot's override), the first two
    t.deepEqual(
      a.encoder.map((s) => s.length),
      [2, 2, 2, 1, 1],
    );
    // UMambaEnc 3-D: a Mamba after every stage; the last's 2×2×2 map has fewer voxels than its 16 channels
    t.deepEqual(
      b.mamba.map((m) => m && (m.channelTokens ? `channels ${m.model}` : `voxels ${m.model}`)),
      ["voxels 4", "voxels 8", "voxels 16", "voxels 16", "channels 8"],
    );
    // 2-D: Mamba on every other stage (UMambaEnc_2d's nn.Identity between), no skip in the last decoder stage
    t.deepEqual(
      d.mamba.map((m) => (m ? (m.channelTokens ? "channels" : "voxels") : null)),
      ["voxels", null, "voxels", null, "channels"],
    );
    t.deepEqual(
      c.decoder.map((s) => s.skip),
      [true, true, true, false],
    );
    t.is(bot3!.version, 2);
  } finally {
    for (const m of [bot3, enc3, bot2, enc2]) m?.dispose();
  }
});

for (const { name: backend } of backends) {
  for (const [tag, dir] of CASES)
    test.serial(`${backend}: a U-Mamba fold's logits equal U-Mamba's own class in PyTorch (${tag})`, async (t) => {
      setBackend(backend);
      const m = await loadNnunet(dir, { folds: [0] });
      try {
        const [x, want] = await Promise.all([`forward_${tag}_input`, `forward_${tag}_logits`].map(npy));
        // (the UMambaEncs amplify rounding: PyTorch's float32 logits are themselves 4.9e-5 (3-D) and
        // 2.4e-5 (2-D) of scale from its float64 ones — a scan after every stage, up to 8192 tokens —
        // and native's 3-D results move by as much with the convolution algorithms a process picks
        // (4.7e-5 to 1.1e-4 seen); the Bots stay under 1e-5)
        await logitsWithin(t, m, x!, want!, tag.startsWith("enc") ? 3e-4 : 1e-4);
      } finally {
        m.dispose();
      }
    });

  test.serial(
    `${backend}: segment with a UMambaEnc folder (channels as tokens: the plans' patch alone) gives PyTorch's labels`,
    async (t) => {
      setBackend(backend);
      const [ct, want, margin] = await Promise.all(["e2e_ct", "e2e_labels", "e2e_margin"].map(npy));
      const vol = volumeFromArray(ct!.data as Float32Array, ct!.shape, [5, 0.48828125, 0.48828125]);
      const m = await loadNnunet(CASES[1][1]);
      try {
        const { labels, report } = await segment(vol, m, { mirror: false, cleanup: false });
        t.deepEqual(report.modelGrid.dims, [8, 32, 32]);
        // (voxels whose two best logits are within 2e-3 not compared: 40 of 8192, where this network's
        // rounding — up to 1.1e-4 of a scale of 3.6 — could tip them)
        labelsMatch(
          t,
          labels.data,
          want!.data,
          (margin!.data as Float32Array).map((v) => (v > 2e-3 ? v : 0)),
        );
      } finally {
        m.dispose();
      }
    },
  );
}

test("a UMambaEnc with channels as tokens runs the plans' patch alone, and says so", async (t) => {
  const m = await loadNnunet(CASES[1][1]);
  try {
    await t.throwsAsync(m.run({ data: new Float32Array(8 * 64 * 64), shape: [1, 1, 8, 64, 64] }), {
      message: /Expected shape \[1, 1, 8, 32, 32\] \(UMamba runs the plans' patch, one at a time\)/,
    });
  } finally {
    m.dispose();
  }
  // UMambaBot takes any multiple of its strides
  const bot = await loadNnunet(CASES[0][1]);
  try {
    const y = await bot.run({ data: new Float32Array(2 * 16 * 32 * 64), shape: [2, 1, 16, 32, 64] });
    t.deepEqual(y.shape, [2, 6, 16, 32, 64]);
  } finally {
    bot.dispose();
  }
});

test("U-Mamba folders: refusals name the file and what is wrong", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "bhsd-umamba-"));
  try {
    cpSync(CASES[1][1], dir, { recursive: true });
    const fresh = readFileSync(join(dir, "plans.json"), "utf8");
    const edit = (f: (conf: Record<string, unknown>) => void) => {
      const plans = JSON.parse(fresh);
      f(plans.configurations["3d_fullres"]);
      writeFileSync(join(dir, "plans.json"), JSON.stringify(plans));
    };
    edit((c) => void (c.pool_op_kernel_sizes as unknown[]).pop());
    await t.throwsAsync(loadNnunet(dir), { message: /checkpoint_final\.pth: the plans' pool_op_kernel_sizes must list 5 strides/ });
    edit(
      (c) =>
        void (c.pool_op_kernel_sizes = [
          [1, 1, 1],
          [1, 2, 2],
          [2, 2, 2],
          [2, 2, 2],
          [1, 2, 9],
        ]),
    );
    await t.throwsAsync(loadNnunet(dir), { message: /pool_op_kernel_sizes\[4\] must be 3 integers from 1 to 8/ });
    edit((c) => void (c.patch_size = [8, 32, 40]));
    await t.throwsAsync(loadNnunet(dir), { message: /patch \[8, 32, 40\] is not a multiple of the strides' product \[4, 16, 16\]/ });
    // a patch whose last map has more voxels than channels: the weights' channel tokens disagree
    edit((c) => void (c.patch_size = [8, 64, 64]));
    await t.throwsAsync(loadNnunet(dir), {
      message: /encoder\.mamba_layers\.4\.mamba's d_model is 8; stage 4 .* takes 16 channels a token/,
    });
    edit((c) => void (c.patch_size = [32, 32]));
    await t.throwsAsync(loadNnunet(dir), { message: /patch \[32, 32\] is not 3-D/ });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("Mamba's ops check their operands before any work, on every backend", async (t) => {
  const f = (shape: number[]) => ({ data: new Float32Array(shape.reduce((a, b) => a * b, 1)), shape });
  const alloc = (shape: number[]) => f(shape);
  for (const { name } of backends) {
    setBackend(name);
    // (x_dbl too narrow for B and C)
    await t.throwsAsync(runSelectiveScan(f([1, 4, 8]), f([1, 4, 8]), f([8, 16]), f([1, 4, 20]), f([8]), f([1, 4, 16]), alloc), {
      message: /x_dbl must be \[1, 4, rank \+ 32\]/,
    });
    await t.throwsAsync(runSelectiveScan(f([1, 4, 8]), f([1, 4, 8]), f([8, 300]), f([1, 4, 700]), f([8]), f([1, 4, 16]), alloc), {
      message: /A_log has a state of 300; 1 to 256 run/,
    });
    // an empty token axis beside an absurd batch: nothing to compute, at once
    const huge = Number.MAX_SAFE_INTEGER;
    const t0 = performance.now();
    const empty = await runSelectiveScan(f([huge, 0, 8]), f([huge, 0, 8]), f([8, 4]), f([huge, 0, 9]), f([8]), f([huge, 0, 16]), alloc);
    t.deepEqual(empty.shape, [huge, 0, 8]);
    t.deepEqual((await runMambaConv(f([huge, 0, 16]), f([8, 1, 4]), undefined, alloc)).shape, [huge, 0, 8]);
    // (a loop over the batch would take hours: 10 s tolerates any load while catching it)
    t.true(performance.now() - t0 < 10_000, `${(performance.now() - t0).toFixed(0)} ms`);
    // the native kernels refuse arrays shorter than the shape they are told, whatever the caller passes
    const be = activeBackend();
    if (be.selectiveScan) {
      const short = new Float32Array(3);
      await t.throwsAsync(async () => be.selectiveScan!(short, short, short, short, short, short, 1, 4, 8, 16, 1, new Float32Array(32)), {
        message: /u/,
      });
      const out = new Float32Array(64);
      const xz = out.subarray(0, 64);
      await t.throwsAsync(async () => be.mambaConv!(xz, 1, 4, 8, 4, new Float32Array(32), null, out.subarray(0, 32)), {
        message: /overlaps/,
      });
    }
  }
});

test.serial("bhsd info describes U-Mamba's folders", (t) => {
  const info = bhsdSync(["info", CASES[1][1], "--json"], 60_000);
  t.is(info.status, 0, info.stderr);
  const i = JSON.parse(info.stdout);
  t.is(i.network.class, "UMambaEnc");
  t.is(i.network.mamba[4].tokens, "channels");
  const text = bhsdSync(["info", CASES[3][1]], 60_000);
  t.is(text.status, 0, text.stderr);
  t.regex(text.stdout, /UMambaEnc \(2-D, U-Mamba\): 5 stages of 4-8-16-16-16 features, Mamba after stages 0, 2, 4 \(channels as tokens\)/);
});
