/**
 * The position fields of a Hugging Face `config.json`: `rope_scaling` (or
 * transformers 5's `rope_parameters`) and the sliding windows of Mistral and
 * Qwen2, read into {@linkcode ModelConfig} fields. Used by `hf_config.ts`.
 *
 * @module
 */

import type { ModelConfig, RopeScaling } from "./types.ts";

/**
 * Checks that `value` of config field `field` is an integer of at least
 * `min` (a `RangeError` naming the field otherwise) and returns it.
 */
export function integerField(field: string, value: unknown, min: number, action: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min) {
    throw new RangeError(
      `Cannot ${action} as field '${field}' must be an integer of at least ${min}: received ${
        JSON.stringify(value)
      }`,
    );
  }
  return value;
}

/** `rope_scaling` parameters each supported type reads (required ones first). */
const ROPE_SCALING_FIELDS: Record<string, { required: string[]; optional: string[] }> = {
  default: { required: [], optional: [] },
  linear: { required: ["factor"], optional: ["original_max_position_embeddings"] },
  dynamic: { required: ["factor"], optional: ["original_max_position_embeddings"] },
  llama3: {
    required: ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"],
    optional: [],
  },
};

/** Reads `rope_scaling` (or `rope_parameters`, transformers 5) into a {@linkcode RopeScaling}. */
export function readRopeScaling(
  j: Record<string, unknown>,
  action: string,
  maxPositions: number,
  ignore: boolean,
): { scaling?: RopeScaling; theta?: number } {
  const field = j.rope_parameters != null ? "rope_parameters" : "rope_scaling";
  const raw = j[field];
  if (raw == null) return {};
  if (typeof raw !== "object" || Array.isArray(raw)) {
    throw new TypeError(
      `Cannot ${action} as '${field}' must be an object or null: received ${JSON.stringify(raw)}`,
    );
  }
  const r = raw as Record<string, unknown>;
  let theta: number | undefined;
  if (field === "rope_parameters" && r.rope_theta != null) {
    if (typeof r.rope_theta !== "number" || !(r.rope_theta > 0)) {
      throw new RangeError(
        `Cannot ${action} as 'rope_parameters.rope_theta' must be a positive number: received ${
          JSON.stringify(r.rope_theta)
        }`,
      );
    }
    theta = r.rope_theta;
  }
  if (ignore) return { theta };
  const typeField = r.rope_type !== undefined ? "rope_type" : "type";
  const type = r[typeField] ?? "default";
  if (r.rope_type !== undefined && r.type !== undefined && r.rope_type !== r.type) {
    throw new TypeError(
      `Cannot ${action} as '${field}.type' must equal '${field}.rope_type' (${
        JSON.stringify(r.rope_type)
      }): received ${JSON.stringify(r.type)}`,
    );
  }
  if (typeof type !== "string" || !(type in ROPE_SCALING_FIELDS)) {
    throw new TypeError(
      `Cannot ${action} as '${field}.${typeField}' must be one of ${
        Object.keys(ROPE_SCALING_FIELDS).join(", ")
      }: received ${
        JSON.stringify(type)
      } (load with ignoreRopeScaling, or generate.ts --ignore-rope-scaling, to run plain RoPE)`,
    );
  }
  const known = ROPE_SCALING_FIELDS[type];
  const allowed = new Set(["rope_type", "type", ...known.required, ...known.optional]);
  if (field === "rope_parameters") allowed.add("rope_theta");
  for (const [key, value] of Object.entries(r)) {
    if (!allowed.has(key) && value != null) {
      throw new TypeError(
        `Cannot ${action} as '${field}.${key}' is not supported with rope type ${
          JSON.stringify(type)
        }: received ${JSON.stringify(value)}`,
      );
    }
  }
  const positive = (key: string, fallback?: number): number => {
    const v = r[key] ?? fallback;
    if (v === undefined) {
      throw new TypeError(
        `Cannot ${action} as '${field}.${key}' is missing (rope type ${JSON.stringify(type)})`,
      );
    }
    if (typeof v !== "number" || !(v > 0) || !Number.isFinite(v)) {
      throw new RangeError(
        `Cannot ${action} as '${field}.${key}' must be a positive number: received ${
          JSON.stringify(v)
        }`,
      );
    }
    return v;
  };
  const original = (fallback?: number): number => {
    const v = positive("original_max_position_embeddings", fallback);
    if (!Number.isInteger(v)) {
      throw new RangeError(
        `Cannot ${action} as '${field}.original_max_position_embeddings' must be an integer: received ${v}`,
      );
    }
    return v;
  };
  switch (type) {
    case "linear":
      return { theta, scaling: { type, factor: positive("factor") } };
    case "dynamic":
      return {
        theta,
        scaling: {
          type,
          factor: positive("factor"),
          originalMaxPositionEmbeddings: original(maxPositions),
        },
      };
    case "llama3": {
      const lowFreqFactor = positive("low_freq_factor");
      const highFreqFactor = positive("high_freq_factor");
      if (!(highFreqFactor > lowFreqFactor)) {
        throw new RangeError(
          `Cannot ${action} as '${field}.high_freq_factor' must be greater than 'low_freq_factor' (${lowFreqFactor}): received ${highFreqFactor}`,
        );
      }
      return {
        theta,
        scaling: {
          type,
          factor: positive("factor"),
          lowFreqFactor,
          highFreqFactor,
          originalMaxPositionEmbeddings: original(),
        },
      };
    }
    default:
      return { theta };
  }
}

/**
 * Mistral's `sliding_window` (every layer) and Qwen2's (`use_sliding_window`;
 * layers from `layer_types`, or those at or after `max_window_layers`).
 */
export function readSlidingWindow(
  j: Record<string, unknown>,
  family: string,
  numLayers: number,
  action: string,
): Pick<ModelConfig, "slidingWindow" | "slidingWindowLayers"> {
  const integer = (field: string, v: unknown, min: number) => integerField(field, v, min, action);
  // Llama ignores `sliding_window` in transformers; so do we.
  if (family === "llama" || j.sliding_window == null) return {};
  if (family === "mistral") {
    return { slidingWindow: integer("sliding_window", j.sliding_window, 1) };
  }
  const use = j.use_sliding_window ?? false;
  if (typeof use !== "boolean") {
    throw new TypeError(
      `Cannot ${action} as 'use_sliding_window' must be a boolean: received ${JSON.stringify(use)}`,
    );
  }
  if (!use) return {};
  const slidingWindow = integer("sliding_window", j.sliding_window, 1);
  let layers: number[];
  if (j.layer_types != null) {
    const types = j.layer_types;
    if (!Array.isArray(types) || types.length !== numLayers) {
      throw new RangeError(
        `Cannot ${action} as 'layer_types' must list ${numLayers} layer types: received ${
          JSON.stringify(types)
        }`,
      );
    }
    types.forEach((t, i) => {
      if (t !== "sliding_attention" && t !== "full_attention") {
        throw new TypeError(
          `Cannot ${action} as 'layer_types[${i}]' must be one of sliding_attention, full_attention: received ${
            JSON.stringify(t)
          }`,
        );
      }
    });
    layers = types.flatMap((t, i) => t === "sliding_attention" ? [i] : []);
  } else {
    const first = integer("max_window_layers", j.max_window_layers ?? 28, 0);
    layers = [];
    for (let l = first; l < numLayers; l++) layers.push(l);
  }
  if (layers.length === 0) return {};
  return layers.length === numLayers ? { slidingWindow } : {
    slidingWindow,
    slidingWindowLayers: layers,
  };
}
