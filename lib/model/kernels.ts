/**
 * WebGPU kernels of a Llama-family forward pass: embedding lookup, RMSNorm,
 * projections (matrix-vector for decode, matrix-matrix for prefill) over f32,
 * f16 or bf16 weights, RoPE, SwiGLU, residual add and causal attention.
 *
 * Each `plan*` function validates its sizes, creates the uniforms and bind
 * groups once and returns a {@linkcode KernelPlan} whose `record` only
 * records dispatches into the caller's compute pass; the caller submits.
 * By family: `kernels_plan.ts` (the plan and its helpers),
 * `kernels_weights.ts` (weights on the GPU), `kernels_linear.ts`
 * (embedding, projections), `kernels_pointwise.ts` (RMSNorm, RoPE, SwiGLU,
 * residual add), `kernels_attention.ts` (causal attention) and
 * `kernels_sampling.ts` (next-token sampling). The
 * plain-loop CPU oracles live in `kernels_reference.ts`.
 *
 * @module
 */

export type { BufferSlice } from "../gpu/buffers.ts";
export {
  combinePlans,
  createSeqUniform,
  type KernelPlan,
  recordPlans,
  writeSeqStart,
} from "./kernels_plan.ts";
export {
  type GpuMatrix,
  type GpuMatrixPart,
  uploadMatrix,
  type UploadMatrixOptions,
  uploadVector,
} from "./kernels_weights.ts";
export {
  type EmbeddingPlanOptions,
  type LinearPlanOptions,
  planEmbedding,
  planLinear,
  planMatmul,
  planMatvec,
} from "./kernels_linear.ts";
export {
  planResidualAdd,
  planRmsNorm,
  planRope,
  planSwiglu,
  type ResidualAddPlanOptions,
  type RmsNormPlanOptions,
  ropeInvFreq,
  type RopePlanOptions,
  type SwigluPlanOptions,
} from "./kernels_pointwise.ts";
export {
  compileSampleToken,
  planSampleToken,
  type SampleTokenPlan,
  type SampleTokenPlanOptions,
} from "./kernels_sampling.ts";
export {
  type CausalAttentionPlanOptions,
  MAX_ATTENTION_HEAD_DIM,
  planCausalAttention,
} from "./kernels_attention.ts";
