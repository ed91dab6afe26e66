// Kernel benchmark suite: attention and selection kernels at Llama-3.1-8B
// attention shapes, each as a share of the streaming-read roofline measured
// in the same run. Run through scripts/bench.ts --suite kernels.
import { requestGpu } from "../lib/gpu/device.ts";
import { benchAttentionKernels } from "./kernels_attention.ts";
import { benchSelectionKernels } from "./kernels_selection.ts";

/** Runs the suite; prints a table unless `json`. */
export async function runSuite(
  { quick, json }: { quick: boolean; json: boolean },
): Promise<object> {
  using gpu = await requestGpu();
  console.error("bench kernels: attention (with the streaming-read roofline)");
  const attention = await benchAttentionKernels(gpu, { quick });
  console.error("bench kernels: selection, summaries, similarity");
  const selection = await benchSelectionKernels(gpu, { quick });
  const roofline = attention.find((r) => r.kernel.includes("stream"))?.gbps ?? NaN;
  const rows = [...attention, ...selection].map((r) => ({
    ...r,
    share_of_roofline: r.gbps / roofline,
  }));
  if (!json) {
    console.log(`${gpu.description}; streaming-read roofline ${roofline.toFixed(2)} GB/s`);
    for (const r of rows) {
      console.log(
        `${r.kernel.padEnd(34)} ${r.shape.padEnd(44)} ${r.median_ms.toFixed(3).padStart(9)} ms ${
          r.gbps.toFixed(2).padStart(7)
        } GB/s ${(100 * r.share_of_roofline).toFixed(0).padStart(4)}%`,
      );
    }
  }
  return { suite: "kernels", adapter: gpu.description, roofline_gbps: roofline, rows };
}
