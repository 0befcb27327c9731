/** The optimisers as torch.optim defines them (float64 state), checked against PyTorch in shared/fixtures/grad. */

/** torch.optim.Adam (L2 weight decay added to the gradient when given). */
export class Adam {
  private m: Float64Array;
  private v: Float64Array;
  private t = 0;
  constructor(
    size: number,
    private readonly o: { lr: number; betas?: [number, number]; eps?: number; weightDecay?: number },
  ) {
    this.m = new Float64Array(size);
    this.v = new Float64Array(size);
  }
  set lr(v: number) {
    (this.o as { lr: number }).lr = v;
  }
  step(p: Float32Array, g: Float32Array): void {
    const [b1, b2] = this.o.betas ?? [0.9, 0.999],
      eps = this.o.eps ?? 1e-8,
      wd = this.o.weightDecay ?? 0;
    this.t++;
    const bc1 = 1 - b1 ** this.t,
      bc2 = 1 - b2 ** this.t;
    for (let i = 0; i < p.length; i++) {
      const gi = g[i]! + wd * p[i]!;
      this.m[i] = b1 * this.m[i]! + (1 - b1) * gi;
      this.v[i] = b2 * this.v[i]! + (1 - b2) * gi * gi;
      p[i] = p[i]! - (this.o.lr / bc1) * (this.m[i]! / (Math.sqrt(this.v[i]!) / Math.sqrt(bc2) + eps));
    }
  }
}

/** torch.optim.SGD with Nesterov momentum and L2 weight decay (nnU-Net's: lr 1e-2, momentum 0.99, wd 3e-5). */
export class SgdNesterov {
  private buf: Float64Array | undefined;
  constructor(
    private readonly size: number,
    private readonly o: { lr: number; momentum?: number; weightDecay?: number },
  ) {}
  set lr(v: number) {
    (this.o as { lr: number }).lr = v;
  }
  step(p: Float32Array, g: Float32Array): void {
    const mu = this.o.momentum ?? 0.99,
      wd = this.o.weightDecay ?? 0;
    const first = !this.buf;
    this.buf ??= new Float64Array(this.size);
    for (let i = 0; i < p.length; i++) {
      const gi = g[i]! + wd * p[i]!;
      this.buf[i] = first ? gi : mu * this.buf[i]! + gi;
      p[i] = p[i]! - this.o.lr * (gi + mu * this.buf[i]!);
    }
  }
}
