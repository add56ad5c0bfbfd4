// The traits and payloads, as Python declares them (lmtt_widget/widget/protocol.py).

export type {
  AttentionSelection, Effect, Encoded, FfnSelection, Info, PanelData, Payload, ResidualSelection, Selection,
  Traits as State,
} from "./protocol.generated";

export type Stage = "embed" | "mid" | "ffn" | "post";
export const STAGES: Stage[] = ["embed", "mid", "ffn", "post"];
export const KINDS = ["attention", "residual", "ffn"] as const;
