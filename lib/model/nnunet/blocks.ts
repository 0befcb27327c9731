/**
 * dynamic-network-architectures' BasicBlockD (building_blocks/residual.py) on a GraphBuilder, under
 * its state_dict names: conv → norm → nonlin, conv → norm (each a ConvDropoutNormReLU: `convK.conv`,
 * `convK.norm`, also named `convK.all_modules.0` / `.1`), plus the input — through an average pool
 * of the stride where the block strides, and a 1×1 convolution without bias and a norm
 * (`skip.I.conv`, `skip.I.norm`) where it changes the width — then the nonlin. U-Mamba's blocks and
 * PrimusV2 / V3's patch embeddings are made of it.
 */
import type { GraphBuilder, NormSpec } from "../monai/layers.js";

export interface BasicBlockD {
  path: string;
  cin: number;
  cout: number;
  kernel: number[];
  stride: number[];
  /** The two convolutions' bias (conv_bias; the skip's 1×1 has none). */
  bias: boolean;
}

/** The block on `x`; `act` is its nonlin (LeakyReLU, ReLU …) on a value, named. */
export function basicBlockD(
  b: GraphBuilder,
  blk: BasicBlockD,
  x: string,
  norm: NormSpec,
  act: (x: string, name: string) => string,
): string {
  const { path, cin, cout, kernel, stride, bias } = blk;
  const ones = kernel.map(() => 1),
    zeros = kernel.map(() => 0);
  const pad = kernel.map((k) => (k - 1) >> 1);
  const cdn = (k: 1 | 2, v: string) =>
    b.norm(
      norm,
      `${path}.conv${k}.norm`,
      b.conv(`${path}.conv${k}.conv`, v, {
        cin: k === 1 ? cin : cout,
        cout,
        kernel,
        stride: k === 1 ? stride : ones,
        pad,
        bias,
        alias: `${path}.conv${k}.all_modules.0`,
      }),
      cout,
      `${path}.conv${k}.all_modules.1`,
    );
  const y = cdn(2, act(cdn(1, x), `${path}.conv1.nonlin`));
  const strided = stride.some((s) => s !== 1);
  let r = strided ? b.node("AveragePool", [x], `${path}.skip.0`, { kernel_shape: stride, strides: stride, pads: [...zeros, ...zeros] }) : x;
  if (cin !== cout) {
    const s = `${path}.skip.${strided ? 1 : 0}`;
    r = b.norm(
      norm,
      `${s}.norm`,
      b.conv(`${s}.conv`, r, { cin, cout, kernel: ones, stride: ones, pad: zeros, bias: false, alias: `${s}.all_modules.0` }),
      cout,
      `${s}.all_modules.1`,
    );
  }
  return act(b.add(y, r, `${path}.residual`), `${path}.nonlin2`);
}
