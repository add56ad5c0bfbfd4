// Commands to Python (lmtt_widget/widget/protocol.py): each call gets its own reply, matched by
// id, with a typed result or a typed error; a call Python does not answer in time fails with a
// "timeout" error. The message and payload types are generated from Python (protocol.generated.ts).

import type { AnyModel } from "@anywidget/types";
import { putBuffers } from "./arrays";
import { PROTOCOL_VERSION, type CommandError, type CommandName, type Commands, type Reply, type Traits } from "./protocol.generated";

export * from "./protocol.generated";

export type Failure = { kind: CommandError["kind"] | "timeout" | "offline"; message: string };
export type Outcome<N extends CommandName> = { ok: true; result: Commands[N]["result"] } | { ok: false; error: Failure };
export type Invoke = <N extends CommandName>(name: N, request: Commands[N]["request"]) => Promise<Outcome<N>>;

// A panel is quick; an analysis or a rerun of a long prompt may take minutes.
const TIMEOUT_MS: Partial<Record<CommandName, number>> = { panel: 30_000 };
const DEFAULT_TIMEOUT_MS = 600_000;

/** The page's side of the protocol: `invoke` sends a command and resolves with its outcome. */
export class Client {
  private pending = new Map<string, (reply: Reply) => void>();
  private prefix = Math.random().toString(36).slice(2, 10);
  private next = 0;
  private onCustom = (msg: unknown, buffers: DataView[]) => {
    const reply = msg as Reply;
    if (!reply || reply.kind !== "lmtt-reply" || reply.id === null || !this.pending.has(reply.id)) return;
    const paths = (msg as { buffer_paths?: (string | number)[][] }).buffer_paths ?? [];
    putBuffers(reply, paths, buffers ?? []);
    this.pending.get(reply.id)?.(reply);
    this.pending.delete(reply.id);
  };

  constructor(private model: AnyModel<Traits>, private live: boolean) {
    model.on("msg:custom", this.onCustom);
  }

  invoke: Invoke = (name, request) => new Promise((resolve) => {
    if (!this.live) { resolve({ ok: false, error: { kind: "offline", message: "needs a live kernel" } }); return; }
    const id = `${this.prefix}-${this.next++}`;
    const timer = setTimeout(() => {
      this.pending.delete(id);
      resolve({ ok: false, error: { kind: "timeout", message: "no answer from the kernel: is it running?" } });
    }, TIMEOUT_MS[name] ?? DEFAULT_TIMEOUT_MS);
    this.pending.set(id, (reply) => {
      clearTimeout(timer);
      resolve(reply.ok ? { ok: true, result: reply.result as Commands[typeof name]["result"] }
        : { ok: false, error: reply.error ?? { kind: "failed", message: "no error given" } });
    });
    this.model.send({ kind: "lmtt-command", protocol: PROTOCOL_VERSION, id, name, request });
  });

  destroy(): void {
    this.model.off("msg:custom", this.onCustom);
    this.pending.clear();
  }
}
