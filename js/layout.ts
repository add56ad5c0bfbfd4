// The graph's geometry along the tokens, without the DOM: which token columns are shown and
// which runs of tokens collapse into gaps, where each column and gap lies at a given column
// width, and where token labels go so that none overlaps another.

/** A shown token column (first === last, gap false) or a run of hidden tokens (gap true). */
export interface Slot { first: number; last: number; gap: boolean }

/** Below this many px per column, a label of every column needs rotated (vertical) text. */
export const HORIZONTAL_MIN = 40;
/** Horizontal distance between two rotated labels' centres in one row (font box + a margin). */
export const LABEL_PITCH = 13;
/** Rows of rotated labels at most: staggered rows let columns narrower than a label each keep one. */
export const MAX_LABEL_ROWS = 3;
const COL_MAX = 140;
const COL_MIN = 0.5;

/** Shown columns and gaps: every token when they all fit at `comfortable` px each (or when
 * collapsing gains little), else the tokens `keep` says, with runs of two or more others as gaps. */
export function planSlots(n: number, keep: (t: number) => boolean, width: number, comfortable: number): Slot[] {
  const all: Slot[] = Array.from({ length: n }, (_, t) => ({ first: t, last: t, gap: false }));
  if (n * comfortable <= width) return all;
  const slots: Slot[] = [];
  let t = 0;
  while (t < n) {
    if (keep(t)) { slots.push({ first: t, last: t, gap: false }); t++; continue; }
    let end = t;
    while (end + 1 < n && !keep(end + 1)) end++;
    if (end === t) slots.push({ first: t, last: t, gap: false }); // one hidden token: as narrow as a gap
    else slots.push({ first: t, last: end, gap: true });
    t = end + 1;
  }
  const collapsed = new Columns(slots, n), plain = new Columns(all, n);
  return collapsed.fitWidth(width) >= 1.25 * plain.fitWidth(width) ? slots : all;
}

/** Positions along x (px from the plot's left edge) of the slots, for a column width. */
export class Columns {
  readonly slotOf: Int32Array; // token -> its slot
  private colsBefore: Int32Array;
  private gapsBefore: Int32Array;
  readonly nCols: number;
  readonly nGaps: number;
  col = 20; // px per shown column
  static readonly PAD = 6;

  constructor(readonly slots: Slot[], readonly nTokens: number) {
    this.slotOf = new Int32Array(nTokens);
    this.colsBefore = new Int32Array(slots.length + 1);
    this.gapsBefore = new Int32Array(slots.length + 1);
    slots.forEach((s, i) => {
      for (let t = s.first; t <= s.last; t++) this.slotOf[t] = i;
      this.colsBefore[i + 1] = this.colsBefore[i] + (s.gap ? 0 : 1);
      this.gapsBefore[i + 1] = this.gapsBefore[i] + (s.gap ? 1 : 0);
    });
    this.nCols = this.colsBefore[slots.length];
    this.nGaps = this.gapsBefore[slots.length];
  }

  /** A gap's width follows the column's, within bounds: wide enough to see and click, never wide. */
  gapWidth(col = this.col): number { return Math.max(6, Math.min(26, 1.5 * col)); }

  /** The whole width at column width `col`. */
  total(col = this.col): number { return 2 * Columns.PAD + this.nCols * col + this.nGaps * this.gapWidth(col); }

  /** The column width at which everything spans `width` (bounded). */
  fitWidth(width: number): number {
    let lo = COL_MIN, hi = COL_MAX;
    if (this.total(hi) <= width) return hi;
    for (let i = 0; i < 40; i++) {
      const mid = (lo + hi) / 2;
      if (this.total(mid) <= width) lo = mid; else hi = mid;
    }
    return lo;
  }

  clampCol(col: number): number { return Math.max(COL_MIN, Math.min(COL_MAX, col)); }

  left(i: number): number {
    return Columns.PAD + this.colsBefore[i] * this.col + this.gapsBefore[i] * this.gapWidth();
  }

  width(i: number): number { return this.slots[i].gap ? this.gapWidth() : this.col; }

  /** The centre of a token's column, or of the gap it is hidden in. */
  x(token: number): number {
    const i = this.slotOf[token];
    return this.left(i) + this.width(i) / 2;
  }

  shown(token: number): boolean { return !this.slots[this.slotOf[token]].gap; }

  /** The slot under x (clamped to the slots). */
  slotAt(x: number): number {
    let lo = 0, hi = this.slots.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.left(mid) <= x) lo = mid; else hi = mid - 1;
    }
    return lo;
  }

  /** x as a fractional slot position, which stays put under the pointer while zooming. */
  toSlotCoord(x: number): number {
    const i = this.slotAt(x);
    return i + (x - this.left(i)) / this.width(i);
  }

  fromSlotCoord(c: number): number {
    const i = Math.max(0, Math.min(this.slots.length - 1, Math.floor(c)));
    return this.left(i) + (c - i) * this.width(i);
  }
}

export interface LabelItem { x: number; priority: number }

/** A row (0 = nearest the graph) for each rotated label, or -1 where it is left out: first in
 * order along x, each into the first row where it keeps `pitch` px from its neighbours (regular
 * staggering); if that leaves some out, again in order of priority, so the most important keep
 * theirs. No two labels of one row are closer than `pitch`. */
export function placeRotated(items: LabelItem[], pitch: number, rows: number): Int8Array {
  const byX = items.map((_, i) => i).sort((a, b) => items[a].x - items[b].x);
  const first = place(items, byX, pitch, rows);
  if (!first.includes(-1)) return first;
  const byPriority = byX.slice().sort((a, b) => items[b].priority - items[a].priority || items[a].x - items[b].x);
  return place(items, byPriority, pitch, rows);
}

function place(items: LabelItem[], order: number[], pitch: number, rows: number): Int8Array {
  const out = new Int8Array(items.length).fill(-1);
  const taken: number[][] = Array.from({ length: rows }, () => []); // each row's xs, sorted
  for (const i of order) {
    const x = items[i].x;
    for (let r = 0; r < rows; r++) {
      const xs = taken[r];
      const at = lowerBound(xs, x);
      const clear = (at === 0 || x - xs[at - 1] >= pitch) && (at === xs.length || xs[at] - x >= pitch);
      if (clear) { xs.splice(at, 0, x); out[i] = r; break; }
    }
  }
  return out;
}

function lowerBound(xs: number[], x: number): number {
  let lo = 0, hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] < x) lo = mid + 1; else hi = mid;
  }
  return lo;
}

/** Rows of rotated labels that a column width needs (1 for horizontal labels). */
export function labelRows(col: number): number {
  if (col >= HORIZONTAL_MIN) return 1;
  return Math.max(1, Math.min(MAX_LABEL_ROWS, Math.ceil(LABEL_PITCH / col)));
}

/** Text cut to `n` characters, the last an ellipsis when cut. */
export function clip(text: string, n: number): string {
  if (n <= 0) return "";
  return text.length > n ? text.slice(0, Math.max(0, n - 1)) + "…" : text;
}
