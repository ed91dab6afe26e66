/**
 * The memory layer: the host page pool (head-major HND runs), offload
 * through a ring of mapped buffers, double-buffered streamed recall, and the
 * page plan (sink, window and selection slots of a sequence).
 *
 * @module
 */

export * from "./host_pool.ts";
export * from "./offload.ts";
export * from "./recall.ts";
export * from "./page_plan.ts";
