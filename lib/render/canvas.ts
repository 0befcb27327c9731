/** An RGB(A) raster to draw the pictures on: rectangles, text in the built-in font, PNG out (pngjs). */
import { PNG } from "pngjs";
import { ADVANCE, GLYPH_H, glyph } from "./font.js";

export type Rgb = readonly [number, number, number];

export class Canvas {
  readonly width: number;
  readonly height: number;
  /** RGBA, row-major, 4 bytes a pixel (alpha always 255). */
  readonly rgba: Uint8Array;

  constructor(width: number, height: number, background: Rgb = [0, 0, 0]) {
    if (!Number.isSafeInteger(width) || !Number.isSafeInteger(height) || width < 1 || height < 1) {
      throw new RangeError(`picture size ${width} × ${height} is not a positive whole number of pixels`);
    }
    if (width * height > 64e6) throw new RangeError(`picture of ${width} × ${height} pixels is larger than 64 megapixels`);
    this.width = width;
    this.height = height;
    this.rgba = new Uint8Array(width * height * 4);
    this.fill(0, 0, width, height, background);
  }

  set(x: number, y: number, c: Rgb): void {
    if (x < 0 || y < 0 || x >= this.width || y >= this.height) return;
    const o = (y * this.width + x) * 4;
    this.rgba[o] = c[0];
    this.rgba[o + 1] = c[1];
    this.rgba[o + 2] = c[2];
    this.rgba[o + 3] = 255;
  }

  fill(x: number, y: number, w: number, h: number, c: Rgb): void {
    const x0 = Math.max(0, x),
      y0 = Math.max(0, y),
      x1 = Math.min(this.width, x + w),
      y1 = Math.min(this.height, y + h);
    for (let yy = y0; yy < y1; yy++) for (let xx = x0; xx < x1; xx++) this.set(xx, yy, c);
  }

  /** Text in the built-in 5 × 7 font, each font pixel `scale` × `scale`; (x, y) is the top-left corner. */
  text(x: number, y: number, s: string, c: Rgb, scale = 2): void {
    let cx = x;
    for (const ch of s) {
      const g = glyph(ch);
      for (let r = 0; r < GLYPH_H; r++) {
        const row = g[r]!;
        for (let k = 0; k < row.length; k++) if (row[k]) this.fill(cx + k * scale, y + r * scale, scale, scale, c);
      }
      cx += ADVANCE * scale;
    }
  }

  /** Copies another canvas in at (x, y). */
  blit(src: Canvas, x: number, y: number): void {
    for (let yy = 0; yy < src.height; yy++) {
      const ty = y + yy;
      if (ty < 0 || ty >= this.height) continue;
      for (let xx = 0; xx < src.width; xx++) {
        const tx = x + xx;
        if (tx < 0 || tx >= this.width) continue;
        const s = (yy * src.width + xx) * 4,
          d = (ty * this.width + tx) * 4;
        this.rgba[d] = src.rgba[s]!;
        this.rgba[d + 1] = src.rgba[s + 1]!;
        this.rgba[d + 2] = src.rgba[s + 2]!;
        this.rgba[d + 3] = 255;
      }
    }
  }

  /** An 8-bit RGB PNG (pngjs). */
  png(): Uint8Array {
    const png = new PNG({ width: this.width, height: this.height, colorType: 2, inputColorType: 6, inputHasAlpha: true });
    png.data = Buffer.from(this.rgba.buffer, this.rgba.byteOffset, this.rgba.byteLength);
    const out = PNG.sync.write(png, { colorType: 2, inputColorType: 6, inputHasAlpha: true, deflateLevel: 6 });
    return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
  }
}
