// Array assertions shared by the tests: each fails at the first offending
// index with both values, instead of printing whole arrays.
import assert from "node:assert/strict";

/** A tolerance: `abs + rel * |expected|` (a number means `abs` alone). */
export type Tolerance = number | { abs?: number; rel?: number };

/** Largest |a[i] - b[i]|; NaN anywhere makes it NaN. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, "maxAbsDiff: lengths differ");
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = d; // NaN propagates
  }
  return m;
}

/** Fails at the first index where `actual` is farther from `expected` than `tol` allows. */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: Tolerance,
  label = "",
): void {
  assert.equal(actual.length, expected.length, `${label}: length`);
  const abs = typeof tol === "number" ? tol : tol.abs ?? 0;
  const rel = typeof tol === "number" ? 0 : tol.rel ?? 0;
  for (let i = 0; i < expected.length; i++) {
    const allowed = abs + rel * Math.abs(expected[i]);
    const err = Math.abs(actual[i] - expected[i]);
    if (!(err <= allowed)) {
      assert.fail(
        `${label}: index ${i}: got ${actual[i]}, want ${
          expected[i]
        } (error ${err}, tolerance ${allowed})`,
      );
    }
  }
}

/**
 * Fails at the first index where the arrays differ (compared as values with
 * `Object.is` semantics except that +0 equals -0; typed arrays of bytes
 * compare bytes). For large arrays where `deepEqual` would print them all.
 */
export function assertArraysEqual(
  actual: ArrayLike<unknown>,
  expected: ArrayLike<unknown>,
  label = "",
): void {
  assert.equal(actual.length, expected.length, `${label}: length`);
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i], e = expected[i];
    if (a !== e && !(Number.isNaN(a) && Number.isNaN(e))) {
      assert.fail(`${label}: first difference at index ${i}: got ${a}, want ${e}`);
    }
  }
}
