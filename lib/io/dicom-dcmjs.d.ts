/** The part of dcmjs (no bundled types) that writeDicomSeg uses. */
declare module "dcmjs" {
  const dcmjs: {
    data: {
      DicomDict: new (meta: Record<string, unknown>) => {
        dict: Record<string, unknown>;
        write(options?: Record<string, unknown>): ArrayBuffer;
      };
      DicomMetaDictionary: { denaturalizeDataset(dataset: Record<string, unknown>): Record<string, unknown> };
    };
  };
  export default dcmjs;
}
