// A host for the widget outside Jupyter: the standalone HTML export (no kernel) and the browser
// tests' harness (a bridge to the Python widget). It plays the part of anywidget's model.

import widget from "./widget";

type Listener = (...args: any[]) => void;

/** What Python sends, as the harness relays it: ipywidgets' update and custom messages with
 * their binary buffers as base64 text. */
export interface Reply {
  method: "update" | "custom";
  state?: Record<string, any>;
  content?: any;
  buffer_paths: (string | number)[][];
  buffers: string[];
}
export type Bridge = (message: { method: "update"; state: Record<string, any> } | { method: "custom"; content: any }) => Promise<Reply[]>;

function fromBase64(text: string): DataView {
  const bin = atob(text);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new DataView(bytes.buffer);
}

/** State saved as JSON: {"__b64__": "..."} stands for a binary buffer. */
function revive(value: any): any {
  if (Array.isArray(value)) return value.map(revive);
  if (value && typeof value === "object") {
    if (typeof value.__b64__ === "string") return fromBase64(value.__b64__);
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, revive(v)]));
  }
  return value;
}

function insert(obj: any, paths: (string | number)[][], buffers: DataView[]): void {
  paths.forEach((path, i) => {
    let o = obj;
    for (const key of path.slice(0, -1)) o = o[key];
    o[path[path.length - 1]] = buffers[i];
  });
}

class LocalModel {
  readonly standalone: boolean;
  private state: Record<string, any>;
  private dirty: Record<string, any> = {};
  private listeners = new Map<string, Set<Listener>>();
  readonly widget_manager = { get_model: () => Promise.reject(new Error("no widget manager here")) };

  constructor(state: Record<string, any>, private bridge: Bridge | null) {
    this.state = state;
    this.standalone = bridge === null;
  }
  get(key: string): any { return this.state[key]; }
  set(key: string, value: any): void {
    this.state[key] = value;
    this.dirty[key] = value;
    this.emit(`change:${key}`);
  }
  on(event: string, fn: Listener): void {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event)!.add(fn);
  }
  off(event?: string | null, fn?: Listener | null): void {
    if (!event) { this.listeners.clear(); return; }
    if (!fn) this.listeners.delete(event);
    else this.listeners.get(event)?.delete(fn);
  }
  private emit(event: string, ...args: any[]): void {
    for (const fn of [...(this.listeners.get(event) ?? [])]) fn(...args);
  }
  save_changes(): void {
    const state = this.dirty;
    this.dirty = {};
    if (this.bridge && Object.keys(state).length) void this.bridge({ method: "update", state }).then((r) => this.apply(r));
  }
  send(content: any): void {
    if (this.bridge) void this.bridge({ method: "custom", content }).then((r) => this.apply(r));
  }
  /** Python's replies, as they would arrive from a kernel. */
  apply(replies: Reply[]): void {
    for (const r of replies) {
      const buffers = r.buffers.map(fromBase64);
      if (r.method === "update" && r.state) {
        insert(r.state, r.buffer_paths, buffers);
        const changed = Object.keys(r.state);
        for (const key of changed) this.state[key] = r.state[key];
        for (const key of changed) this.emit(`change:${key}`);
      } else if (r.method === "custom") {
        this.emit("msg:custom", r.content, buffers);
      }
    }
  }
}

/** Mount the widget in `el` with a saved state; `bridge` connects it to Python (tests). */
export async function mount(el: HTMLElement, state: Record<string, any>, bridge: Bridge | null = null): Promise<LocalModel> {
  const model = new LocalModel(revive(state), bridge);
  const controller = new AbortController();
  await widget.render({ model: model as any, el, signal: controller.signal, host: null as any, experimental: null as any });
  return model;
}

(window as any).lmtt = { mount };
