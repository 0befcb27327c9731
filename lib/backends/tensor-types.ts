/**
 * The tensor operations every backend implements (float32, NCDHW). Public functions in
 * lib/ops/tensor.ts validate shapes and options, size the output, then call these.
 */
export type Triple = [number, number, number];

export const ACT = { none: 0, relu: 1, leaky: 2 } as const;
export const UNARY = { relu: 0, leaky: 1, sigmoid: 2, prelu: 3, gelu: 4, geluTanh: 5 } as const;
export const COORD_MODES = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"] as const;
export const NEAREST_MODES = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"] as const;

export interface TensorBackend {
  /** out [N, Co, Do, Ho, Wo] = conv(x [N, C, D, H, W], w [Co, C/groups, kd, kh, kw]) + bias, then act. pads: leading d h w. */
  conv3d(
    x: Float32Array,
    inShape: [number, number, number, number, number],
    w: Float32Array,
    wShape: [number, number, number, number],
    bias: Float32Array | null,
    strides: Triple,
    dilations: Triple,
    pads: Triple,
    groups: number,
    outSpatial: Triple,
    act: number,
    alpha: number,
    out: Float32Array,
  ): Promise<void>;
  /**
   * Optional: conv3d without an activation, then out instance-normalised in place (scale, bias
   * per output channel, eps) and activated, in one call. Callers fall back to conv3d + instanceNorm.
   * `residual` (where convNormResidual): a tensor of out's size added after the norm, before the
   * activation (a residual block's InstanceNorm → Add → LeakyReLU). `normGroups` (where
   * convNormGroups; no residual then): a group norm's groups of consecutive output channels instead.
   */
  conv3dNorm?(
    x: Float32Array,
    inShape: [number, number, number, number, number],
    w: Float32Array,
    wShape: [number, number, number, number],
    bias: Float32Array | null,
    strides: Triple,
    dilations: Triple,
    pads: Triple,
    groups: number,
    outSpatial: Triple,
    out: Float32Array,
    scale: Float32Array | null,
    normBias: Float32Array | null,
    eps: number,
    act: number,
    alpha: number,
    residual?: Float32Array | null,
    normGroups?: number,
  ): Promise<void>;
  /** Whether conv3dNorm takes a residual. */
  readonly convNormResidual?: boolean;
  /** Whether conv3dNorm takes the norm's groups (a group norm). */
  readonly convNormGroups?: boolean;
  /**
   * Optional (where convResidual): conv3d, then `residual` (out's size) added in place and the
   * activation applied to the sum, in one call (a residual block's Conv → Add(skip)).
   */
  conv3dResidual?(...a: [...conv: Parameters<TensorBackend["conv3d"]>, residual: Float32Array]): Promise<void>;
  /** Whether conv3dResidual runs in one call (an older binary lacks it). */
  readonly convResidual?: boolean;
  /** w [C, Co/groups, kd, kh, kw]; wShape = [Co/groups, kd, kh, kw]; out extent includes output padding. */
  convTranspose3d(
    x: Float32Array,
    inShape: [number, number, number, number, number],
    w: Float32Array,
    wShape: [number, number, number, number],
    bias: Float32Array | null,
    strides: Triple,
    dilations: Triple,
    pads: Triple,
    groups: number,
    outSpatial: Triple,
    out: Float32Array,
  ): Promise<void>;
  instanceNorm(
    x: Float32Array,
    N: number,
    C: number,
    spatial: number,
    scale: Float32Array | null,
    bias: Float32Array | null,
    eps: number,
    act: number,
    alpha: number,
    out: Float32Array,
  ): Promise<void>;
  /**
   * Group normalisation: statistics per (n, group of C/groups consecutive channels), scale and bias
   * per channel, then the activation, in one call. Optional: ops.groupNorm composes it from
   * instanceNorm, mul, add and the activation where a backend lacks it.
   */
  groupNorm?(
    x: Float32Array,
    N: number,
    C: number,
    spatial: number,
    groups: number,
    scale: Float32Array | null,
    bias: Float32Array | null,
    eps: number,
    act: number,
    alpha: number,
    out: Float32Array,
  ): Promise<void>;
  /**
   * Optional: out[t] = a[t] · b[t or 0] for t < batches, row-major a [M, K], b [K, N], out [M, N]
   * (MatMul and Einsum; without it they run as 1×1×1 convolutions). bias (where gemmBias): one
   * value per column, added to each finished sum.
   */
  gemm?(
    a: Float32Array,
    b: Float32Array,
    batches: number,
    M: number,
    K: number,
    N: number,
    bBatched: boolean,
    out: Float32Array,
    bias?: Float32Array,
  ): Promise<void>;
  /** Whether gemm() takes a bias (an addon built before it would ignore one). */
  readonly gemmBias?: boolean;
  /**
   * Optional: fused multi-head self-attention from a qkv projection. qkv [batch, n, 3, heads, hd];
   * scores q·kᵀ (q multiplied by `scale` first where scaleQ, else the products), plus each extra in
   * order — item (b, h)'s n × n block of extra.data at extra.offsets[b·heads + h] (−1: a block of
   * zeros, skipped), row i at i·rowStride (0 or n) — softmax over the keys, times v; out [batch,
   * n, heads·hd]. Without it the model runs the unfused nodes. rope (where attentionRope): q and k
   * rotated first by a rotary embedding's table [n, 2·hd] — token j's channel t becomes
   * x[t]·cos[j][t] + x[t ^ 1]·sin[j][t], cos then signed sin per token, shared by every head.
   */
  attention?(
    qkv: Float32Array,
    shape: [batch: number, n: number, heads: number, hd: number],
    scale: number,
    scaleQ: boolean,
    extras: [data: Float32Array, offsets: Float64Array, rowStride: number][],
    out: Float32Array,
    rope?: Float32Array,
  ): Promise<void>;
  /** Whether attention() takes a rotary embedding's table (an addon built before it would ignore one). */
  readonly attentionRope?: boolean;
  batchNorm(
    x: Float32Array,
    N: number,
    C: number,
    spatial: number,
    scale: Float32Array,
    bias: Float32Array,
    mean: Float32Array,
    variance: Float32Array,
    eps: number,
    out: Float32Array,
  ): Promise<void>;
  /**
   * Optional: a LayerNorm over the channels of x [N, C, spatial] — each position's values less their
   * mean over √(mean square + eps), then × gamma[c] + beta[c] (null: 1 and 0). Without it the
   * executor computes it in JavaScript.
   */
  channelNorm?(
    x: Float32Array,
    N: number,
    C: number,
    spatial: number,
    gamma: Float32Array | null,
    beta: Float32Array | null,
    eps: number,
    out: Float32Array,
  ): Promise<void>;
  /**
   * Optional: out [outer, cols, rows] = x [outer, rows, cols] with its last two axes swapped. Without
   * it the executor transposes in JavaScript.
   */
  transposeLast2?(x: Float32Array, outer: number, rows: number, cols: number, out: Float32Array): Promise<void>;
  /**
   * Optional: Mamba's causal depthwise convolution then SiLU (model/mamba.ts's MAMBA_CONV_OP) —
   * xz [B, L, 2·Di] (its first Di channels read), weight [Di, K], bias [Di] or null — into out
   * [B, L, Di]. Without it the executor computes it in JavaScript.
   */
  mambaConv?(
    xz: Float32Array,
    B: number,
    L: number,
    Di: number,
    K: number,
    weight: Float32Array,
    bias: Float32Array | null,
    out: Float32Array,
  ): Promise<void>;
  /**
   * Optional: Mamba's selective scan (model/mamba.ts's SELECTIVE_SCAN_OP) — u and delta [B, L, Di],
   * A_log [Di, N], x_dbl [B, L, R + 2N], D [Di], xz [B, L, 2·Di] — into out [B, L, Di]. Without it
   * the executor computes it in JavaScript.
   */
  selectiveScan?(
    u: Float32Array,
    delta: Float32Array,
    aLog: Float32Array,
    xDbl: Float32Array,
    d: Float32Array,
    xz: Float32Array,
    B: number,
    L: number,
    Di: number,
    N: number,
    R: number,
    out: Float32Array,
  ): Promise<void>;
  unary(
    x: Float32Array,
    N: number,
    C: number,
    spatial: number,
    op: number,
    alpha: number,
    slope: Float32Array | null,
    out: Float32Array,
  ): Promise<void>;
  /** Broadcasting a+b or a·b: shape and element strides padded to 6 axes (stride 0 along broadcast axes). */
  /** act/alpha (ACT, optional): the activation applied as each value is stored (Add → LeakyRelu fused). */
  binary(
    a: Float32Array,
    b: Float32Array,
    shape: number[],
    stridesA: number[],
    stridesB: number[],
    mul: boolean,
    out: Float32Array,
    act?: number,
    alpha?: number,
  ): Promise<void>;
  pool3d(
    x: Float32Array,
    NC: number,
    inSpatial: Triple,
    outSpatial: Triple,
    kernel: Triple,
    strides: Triple,
    dilations: Triple,
    pads: Triple,
    max: boolean,
    countIncludePad: boolean,
    out: Float32Array,
  ): Promise<void>;
  resize3d(
    x: Float32Array,
    NC: number,
    inSpatial: Triple,
    outSpatial: Triple,
    scales: Float64Array,
    linear: boolean,
    coordMode: number,
    nearestMode: number,
    out: Float32Array,
  ): Promise<void>;
  softmax(x: Float32Array, N: number, C: number, spatial: number, out: Float32Array): Promise<void>;
  /**
   * Training's convolutions: while held (each `true` matched by a `false`), the native backend runs
   * Winograd with F(2×…) tiles, whose rounding keeps a backward pass within PyTorch's (F(4×4)
   * tiles flip LeakyReLU gates near zero). Optional: other backends compute convolutions directly.
   */
  preciseConvolutions?(on: boolean): void;
  /**
   * segment()'s sliding-window sum of one window: acc[k] += logits[k]·gauss·scale over the window
   * of extent `patch` at `at` of the [C, …grid] arrays, weight += gauss there (in double, each store
   * rounded to float: the TypeScript loop's arithmetic). Optional: segment() runs that loop where a
   * backend lacks it.
   */
  accumulateWindow?(
    acc: Float32Array,
    weight: Float32Array,
    logits: Float32Array,
    gauss: Float32Array,
    C: number,
    grid: Triple,
    patch: Triple,
    at: Triple,
    scale: number,
  ): Promise<void>;
  /**
   * segment()'s softmax of its window sums by their weights: the softmax over C of x[n, c, i] /
   * div[n, i], each quotient rounded to float first (as dividing into a Float32Array, then the
   * softmax, gives it). Optional: segment() divides in TypeScript where a backend lacks it.
   */
  softmaxDivided?(x: Float32Array, div: Float32Array, N: number, C: number, spatial: number, out: Float32Array): Promise<void>;
  argmax(x: Float32Array, N: number, C: number, spatial: number, out: Int32Array): Promise<void>;
  concat(xs: Float32Array[], lens: number[], outer: number, inner: number, out: Float32Array): Promise<void>;
  /**
   * Training: gradients of act(instanceNorm(x)·gamma + beta) from dy; `gate` (the fused activation's
   * output) applies the leaky ReLU's derivative (slope alpha where gate ≤ 0) first. dgamma, dbeta
   * [C] are overwritten. Optional: backprop falls back to TypeScript where a backend lacks it.
   */
  instanceNormBackward?(
    x: Float32Array,
    gate: Float32Array | null,
    dy: Float32Array,
    N: number,
    C: number,
    spatial: number,
    gamma: Float32Array | null,
    eps: number,
    alpha: number,
    dx: Float32Array,
    dgamma: Float32Array,
    dbeta: Float32Array,
  ): Promise<void>;
  /**
   * Weight gradient of one batch item as a correlation: out[ca, cb, k…] += Σ_o A[ca, o] · B[cb, o·s − p + k·d]
   * (conv3d: A = dy, B = x; transposed convolution: A = x, B = dy).
   */
  convWeightGrad(
    A: Float32Array,
    aShape: [number, number, number, number],
    B: Float32Array,
    bShape: [number, number, number, number],
    kernel: Triple,
    strides: Triple,
    pads: Triple,
    dilations: Triple,
    out: Float32Array,
  ): Promise<void>;
}
