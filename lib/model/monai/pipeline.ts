/** A MONAI bundle's inference pipeline as segment()'s config (filled in below). */
import type { ModelConfig } from "../config.js";
import type { BundleConfig } from "./bundle.js";

export async function pipelineConfig(cfg: BundleConfig): Promise<{ config: Partial<ModelConfig>; pipeline: string[] }> {
  void cfg;
  return { config: {}, pipeline: [] };
}
