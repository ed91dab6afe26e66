import assert from "node:assert/strict";
import {
  createTraceWriter,
  encodeTraceHeader,
  parseTrace,
  readTrace,
} from "../lib/workloads/trace.ts";
import { createRandom, randomNormalArray } from "../lib/workloads/random.ts";

Deno.test("trace round trip keeps every record", async () => {
  const header = { numLayers: 3, numQueryHeads: 4, numKvHeads: 2, headDim: 8, promptLength: 2 };
  const path = await Deno.makeTempFile({ suffix: ".fkvtrace" });
  const rng = createRandom(3);
  const records: Float32Array[][] = [];
  const w = await createTraceWriter(path, header);
  for (let t = 0; t < 5; t++) {
    for (let l = 0; l < 3; l++) {
      const rec = [
        randomNormalArray(rng, 32),
        randomNormalArray(rng, 16),
        randomNormalArray(rng, 16),
      ];
      records.push(rec);
      w.append(l, rec[0], rec[1], rec[2]);
    }
  }
  await w.close();
  const trace = await readTrace(path);
  assert.equal(trace.numTokens, 5);
  assert.deepEqual(trace.header, header);
  for (let t = 0; t < 5; t++) {
    for (let l = 0; l < 3; l++) {
      const rec = records[t * 3 + l];
      assert.deepEqual(trace.q(t, l), rec[0]);
      assert.deepEqual(trace.k(t, l), rec[1]);
      assert.deepEqual(trace.v(t, l), rec[2]);
    }
  }
  await Deno.remove(path);
});

Deno.test("trace rejects bad input", async () => {
  const header = { numLayers: 2, numQueryHeads: 2, numKvHeads: 1, headDim: 2, promptLength: 0 };
  assert.throws(
    () => encodeTraceHeader({ ...header, numQueryHeads: 3, numKvHeads: 2 }),
    RangeError,
  );
  assert.throws(() => parseTrace(new Uint8Array(20)), /must start with "FKVTRACE"/);
  const head = encodeTraceHeader(header);
  const truncated = new Uint8Array(head.length + 10);
  truncated.set(head);
  assert.throws(() => parseTrace(truncated), /whole number of 64-byte tokens: received 10/);
  const path = await Deno.makeTempFile();
  const w = await createTraceWriter(path, header);
  assert.throws(
    () => w.append(1, new Float32Array(4), new Float32Array(2), new Float32Array(2)),
    /must be 0/,
  );
  assert.throws(
    () => w.append(0, new Float32Array(3), new Float32Array(2), new Float32Array(2)),
    /'q' must have length 4/,
  );
  await w.close();
  await Deno.remove(path);
});
