/** bhsd — intracranial hemorrhage on head CT, from Node.js. The public surface (shared/spec/api.md). */
import "./public-globals.js";
import type { ServeOptions, Service } from "./server/service.js";
export type { BackendName, Disposal, DTypeName, NiftiMeta, Tensor, Volume, VoxelArray } from "./types.js";
export {
  backendInfo,
  setBackend,
  setCudaPrecision,
  setCpuPrecision,
  availableBackends,
  type BackendInfo,
  type BackendDetails,
  type CpuPrecision,
  type Precision,
} from "./backends/index.js";
export type { CudaPrecision } from "./backends/cuda.js";
export { exportConvPlan, importConvPlan, clearConvPlan, type ConvPlan, type ConvPlanImport } from "./backends/conv-plan.js";
export { readNifti, readNiftiHeader, writeNifti, NiftiError, type ReadNiftiOptions, type WriteNiftiOptions } from "./io/nifti.js";
export { readNpy, writeNpy, parseNpy, formatNpy, type NpyArray } from "./io/npy.js";
export {
  readDicomSeries,
  listDicomSeries,
  DicomError,
  type DicomVolume,
  type DicomSeriesMeta,
  type DicomSeriesSummary,
  type DicomInstanceRef,
  type DicomFileBytes,
  type DicomSource,
  type ReadDicomOptions,
} from "./io/dicom.js";
export { writeDicomSeg, type WriteDicomSegOptions, type DicomSegResult } from "./io/dicom-seg.js";
export { readCt, type ReadCtOptions } from "./io/ct.js";
export { volumeFromArray, release } from "./volume.js";
export { voxelStats, type VolumeStats } from "./ops/stats.js";
export { VERSION } from "./version.js";
export { toJson } from "./json.js";
export {
  connectedComponents,
  componentStats,
  cleanup,
  type Component,
  type ComponentsOptions,
  type CleanupOptions,
  type Connectivity,
} from "./ops/components.js";
export {
  evaluate,
  BHSD_CLASSES,
  DEFAULT_CLASSES,
  METRIC_KEYS,
  type CaseMetrics,
  type ClassMetrics,
  type EvaluateOptions,
} from "./metrics/evaluate.js";
export { evaluateDataset, type DatasetOptions, type DatasetResult, type DatasetCase } from "./metrics/dataset.js";
export { summarize, aggregate, type Summary, type Aggregate } from "./metrics/summary.js";
export { casesToCsv, summaryToCsv, csvNumber } from "./metrics/csv.js";
export { slicePresence, slicesToCsv, parseSliceCsv, evaluateSlices, type SliceLabels, type SliceScore } from "./metrics/slices.js";
export {
  conv3d,
  conv3dInstanceNorm,
  convTranspose3d,
  instanceNorm,
  groupNorm,
  batchNorm,
  relu,
  leakyRelu,
  prelu,
  gelu,
  sigmoid,
  add,
  mul,
  concat,
  maxPool3d,
  avgPool3d,
  resize,
  softmax,
  argmax,
  assertTensor,
  allocTensor,
  type Conv3dOptions,
  type FusedNorm,
  type ConvTranspose3dOptions,
  type Pool3dOptions,
  type ResizeOptions,
} from "./ops/tensor.js";
export { loadModel, Model, type RunStats } from "./model/model.js";
export { type ModelConfig, type Normalization, defaultConfig, fromNnunet } from "./model/config.js";
export { encodeModel } from "./model/onnx-proto.js";
export { segment, windowStarts, gaussianMap, type SegmentOptions, type SegmentReport, type SegmentProgress } from "./model/segment.js";
export { resampleVolume } from "./model/resample.js";
export {
  loadNnunet,
  NnunetModel,
  CheckpointError,
  type LoadNnunetOptions,
  type Fold,
  type Architecture,
  type NnunetArchitecture,
  type UMambaArchitecture,
} from "./model/nnunet/index.js";
export {
  loadMonai,
  monaiInfo,
  MONAI_NETWORKS,
  type LoadMonaiOptions,
  type MonaiInfo,
  type MonaiBundle,
  type MonaiNetworkClass,
} from "./model/monai/index.js";
export { readNnunetPostprocessing } from "./model/nnunet/postprocessing.js";
export type { ServeOptions } from "./server/service.js";
export type { Service, InjectRequest, InjectResponse } from "./server/service.js";
/** The REST service (fastify is loaded only when it is asked for); not listening until `listen()`. */
export async function createServer(options?: ServeOptions): Promise<Service> {
  const app = await (await import("./server/server.js")).createServer(options);
  return app; // a fastify instance, checked here to fit the Service declared for users
}
export { makePhantom, type Phantom, type PhantomOptions } from "./phantom/phantom.js";
export { prng } from "./random.js";
export { writePhantoms, type PhantomSetOptions } from "./phantom/write.js";
export {
  train,
  type TrainOptions,
  type TrainResult,
  type TrainProgress,
  type LabelledCase,
  type SliceLabelledCase,
  type SemiOptions,
} from "./train/trainer.js";
export { Adam, SgdNesterov } from "./train/optim.js";
export { backprop, type BackpropResult } from "./train/backprop.js";
export { milLoss, consistencyLoss, emaUpdate, rampWeight } from "./train/semi.js";
export {
  renderOverlay,
  renderOverlayImage,
  sliceOrientation,
  BRAIN_WINDOW,
  SUBDURAL_WINDOW,
  CLASS_COLORS,
  type OverlayOptions,
  type OverlayImage,
  type DisplayWindow,
  type Panel,
} from "./render/overlay.js";
export { renderReport, renderReportData, type ReportInput, type ReportData } from "./render/report.js";
export { diceHeadline, type DiceHeadline } from "./metrics/headline.js";
