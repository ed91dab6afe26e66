// Streaming-read roofline and the GPU timing helper.
import assert from "node:assert/strict";
import { measureReadBandwidth } from "../lib/kernels/roofline.ts";
import { timeGpuWork } from "../lib/gpu/timing.ts";
import { gpuTest } from "./_gpu.ts";

gpuTest("roofline: measures a small buffer with either clock", async ({ device, timestamps }) => {
  for (const useTimestamps of [true, false]) {
    const r = await measureReadBandwidth(device, {
      bytes: 1 << 20,
      iterations: 2,
      timestamps: useTimestamps,
    });
    assert.equal(r.bytes, 1 << 20);
    assert.equal(r.method, useTimestamps && timestamps ? "timestamp" : "wall");
    assert.ok(r.medianMs > 0 && Number.isFinite(r.medianMs), `medianMs ${r.medianMs}`);
    assert.ok(Math.abs(r.gbps - r.bytes / (r.medianMs * 1e6)) < 1e-9 * r.gbps);
  }
  // Odd sizes: fewer vec4 than invocations, and a tail after the stride loop.
  for (const bytes of [16, 16 * 1000 + 16]) {
    const r = await measureReadBandwidth(device, { bytes, iterations: 1, workgroupSize: 64 });
    assert.ok(r.gbps > 0);
  }
});

gpuTest("roofline: bad options are refused before any GPU work", async ({ device }) => {
  const limit = device.limits.maxStorageBufferBindingSize;
  await assert.rejects(
    measureReadBandwidth(device, { bytes: 100 }),
    (e: Error) =>
      e instanceof RangeError && /'bytes' must be a multiple of 16: received 100/.test(e.message),
  );
  await assert.rejects(
    measureReadBandwidth(device, { bytes: limit + 16 }),
    (e: Error) => e instanceof RangeError && /'bytes' must be between 16 and/.test(e.message),
  );
  await assert.rejects(
    measureReadBandwidth(device, { bytes: 1024, iterations: 0 }),
    (e: Error) => e instanceof RangeError && /'iterations' must be at least 1/.test(e.message),
  );
  await assert.rejects(
    measureReadBandwidth(device, { bytes: 1024, workgroups: 1.5 }),
    (e: Error) => e instanceof TypeError && /'workgroups' must be an integer/.test(e.message),
  );
  await assert.rejects(
    timeGpuWork(device, () => {}, { repeats: 0 }),
    (e: Error) => e instanceof RangeError && /'repeats' must be at least 1/.test(e.message),
  );
});

gpuTest("timeGpuWork: runs warm-up and timed repetitions", async ({ device }) => {
  let recorded = 0;
  const t = await timeGpuWork(device, (encoder, ts) => {
    recorded++;
    const pass = encoder.beginComputePass({
      label: "test empty pass",
      timestampWrites: ts && {
        querySet: ts.querySet,
        beginningOfPassWriteIndex: ts.beginIndex,
        endOfPassWriteIndex: ts.endIndex,
      },
    });
    pass.end();
  }, { iterations: 3, warmup: 2, timestamps: false, repeats: 2 });
  assert.equal(recorded, 2 + 3 * 2);
  assert.equal(t.samplesMs.length, 3);
  assert.equal(t.method, "wall");
  assert.ok(t.samplesMs.every((x) => x >= 0));
  assert.ok(t.medianMs >= Math.min(...t.samplesMs) && t.medianMs <= Math.max(...t.samplesMs));
});
