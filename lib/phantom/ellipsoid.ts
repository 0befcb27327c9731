/** Paints an axis-aligned ellipsoid (voxel units) into a volume: the shape the phantoms and benchmarks draw. */
export function paintEllipsoid(
  m: Uint8Array,
  dims: readonly [number, number, number],
  center: readonly [number, number, number],
  axes: readonly [number, number, number],
  value: number,
): void {
  const [nx, ny, nz] = dims,
    [cx, cy, cz] = center,
    [ax, ay, az] = axes;
  for (let z = Math.max(0, Math.floor(cz - az)); z <= Math.min(nz - 1, Math.ceil(cz + az)); z++)
    for (let y = Math.max(0, Math.floor(cy - ay)); y <= Math.min(ny - 1, Math.ceil(cy + ay)); y++)
      for (let x = Math.max(0, Math.floor(cx - ax)); x <= Math.min(nx - 1, Math.ceil(cx + ax)); x++)
        if (((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2 <= 1) m[(z * ny + y) * nx + x] = value;
}
