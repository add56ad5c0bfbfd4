import type { Encoded } from "./arrays";

export type Stage = "embed" | "mid" | "ffn" | "post";
export const STAGES: Stage[] = ["embed", "mid", "ffn", "post"];
export const KINDS = ["attention", "residual", "ffn"] as const;

export interface Info {
  model: string; n_layers: number; n_heads: number; n_kv_heads: number; d_model: number;
  d_vocab: number; n_ctx: number | null; parallel: boolean; n_params: number; distance: string;
  prompt: string; tokens: string[];
  predictions: { tokens: string[][]; probs: Encoded };
}

export interface Payload {
  target: number; threshold: number; renormalize: boolean;
  nodes: { stage: Encoded; layer: Encoded; token: Encoded };
  edges: { source: Encoded; target: Encoded; kind: Encoded; weight: Encoded; head_row: Encoded };
  heads: Encoded;
}

export type Selection =
  | Record<string, never>
  | { kind: "residual"; stage: "embed" | "mid" | "post"; layer: number; token: number }
  | { kind: "attention"; layer: number; source: number; target: number; head: number | null }
  | { kind: "ffn"; layer: number; token: number; neuron: number | null };

export interface State {
  info: Info;
  payload: Payload;
  target: number;
  threshold: number;
  renormalize: boolean;
  normalize_lens: boolean;
  selection: Selection;
  message: string;
  busy: string;
  preloaded: Record<string, any>;
}

export type Effect = { promoted: [string, number][]; suppressed: [string, number][] };
