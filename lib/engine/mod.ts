/**
 * The retrieval engine layer: options and their defaults, page geometry,
 * statistics, and the engine that runs every policy.
 *
 * @module
 */

export * from "./engine.ts";
export * from "./geometry.ts";
