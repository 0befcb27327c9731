// bhsd — 3D convolution (NCDHW, weights [Cout, Cin/groups, kD, kH, kW]) and transposed convolution.
//
// A blocked direct convolution: each task takes a group of output row segments of 16 voxels (or,
// for rows shorter than 16, runs of 16 voxels in memory order), packs for them a panel of the
// input samples each weight touches (K = ci·kd·kh·kw rows × 16, in L1/L2-sized blocks of input
// channels shared evenly: no im2col of the volume), and runs an R×16 register-tiled AVX2/FMA
// micro-kernel (R ≤ 6 output channels; CoBlocks) over blocks of pre-packed weights. Layers with
// few output channels skip the panels and read a zero-padded copy of the input at precomputed
// offsets (conv3d_forward_indirect); 1×1×1 layers are a plain GEMM (conv3d_forward_pointwise).
// Bias and the activation are applied when the last block of input channels is stored. A
// baseline kernel serves processors without AVX2 (chosen at run time).
//
// The pieces, one header each (this one includes them all; include it, not them):
//   conv_common.hpp     Act, ConvGeom, conv_out, MR × NR tiles, CoBlocks, shared helpers
//   conv_kernels.hpp    the micro-kernels and their run-time dispatch (pick_kernel)
//   conv_pack.hpp       weight packing and the input panels
//   conv_forward.hpp    conv3d_forward (indirect, pointwise, blocked)
//   conv_winograd.hpp   Winograd F(2×2×2, 3×3×3) and the per-shape plan choosing it (BHSD_WINOGRAD)
//   conv_transposed.hpp conv_transpose3d_forward
//   conv_grad.hpp       correlate_weight_grad (the weight gradient)
#pragma once

#include "conv_common.hpp"
#include "conv_kernels.hpp"
#include "conv_pack.hpp"
#include "conv_forward.hpp"
#include "conv_winograd.hpp"
#include "conv_transposed.hpp"
#include "conv_grad.hpp"
