import assert from "node:assert/strict";
import { gpuTest } from "./_gpu.ts";
import { createBuffer, readBuffer, writeIfChanged } from "../lib/gpu/buffers.ts";
import { cachedPipeline } from "../lib/gpu/pipelines.ts";
import { createRandom } from "../lib/workloads/random.ts";

gpuTest("device has raised storage limits and reports features", (gpu) => {
  assert.equal(
    gpu.device.limits.maxStorageBufferBindingSize,
    gpu.adapter.limits.maxStorageBufferBindingSize,
  );
  assert.equal(gpu.f16, gpu.adapter.features.has("shader-f16"));
  assert.ok(gpu.description.length > 0);
});

gpuTest("pipelines are cached per device and run", async ({ device }) => {
  const code = `
    @group(0) @binding(0) var<storage, read_write> out: array<u32>;
    override scale: u32 = 1u;
    @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3u) {
      if (id.x < arrayLength(&out)) { out[id.x] = id.x * scale; }
    }`;
  const a = cachedPipeline(device, "test-iota", code, { scale: 3 });
  const b = cachedPipeline(device, "test-iota", code, { scale: 3 });
  assert.equal(a, b);
  const out = createBuffer(device, "iota", GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC, 256);
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(a);
  pass.setBindGroup(
    0,
    device.createBindGroup({
      layout: a.getBindGroupLayout(0),
      entries: [{ binding: 0, resource: { buffer: out } }],
    }),
  );
  pass.dispatchWorkgroups(1);
  pass.end();
  device.queue.submit([enc.finish()]);
  const got = new Uint32Array(await readBuffer(device, out));
  assert.deepEqual([...got.slice(0, 4)], [0, 3, 6, 9]);
  out.destroy();
});

Deno.test("seeded random is reproducible", () => {
  const a = createRandom(7), b = createRandom(7), c = createRandom(8);
  const xs = Array.from({ length: 5 }, () => a.next());
  assert.deepEqual(xs, Array.from({ length: 5 }, () => b.next()));
  assert.notDeepEqual(xs, Array.from({ length: 5 }, () => c.next()));
  for (const x of xs) assert.ok(x >= 0 && x < 1);
});

gpuTest(
  "writeIfChanged skips a write of the bytes it wrote last, per buffer",
  async ({ device }) => {
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    const a = createBuffer(device, "a", usage, 16), b = createBuffer(device, "b", usage, 16);
    const q = device.queue;
    const words = new Uint32Array([1, 2, 3, 4]);
    assert.equal(writeIfChanged(q, a, words), true);
    assert.equal(writeIfChanged(q, a, new Uint32Array([1, 2, 3, 4])), false);
    assert.equal(writeIfChanged(q, b, words), true, "another buffer has its own record");
    words[3] = 5; // the record is a copy: changing the array after the write counts as a change
    assert.equal(writeIfChanged(q, a, words), true);
    assert.equal(
      writeIfChanged(q, a, new Uint32Array([1, 2])),
      true,
      "a shorter write is a change",
    );
    assert.deepEqual([...new Uint32Array(await readBuffer(device, a))], [1, 2, 3, 5]);
    assert.deepEqual([...new Uint32Array(await readBuffer(device, b))], [1, 2, 3, 4]);
    a.destroy();
    b.destroy();
  },
);
