// Arrays cross from Python as {dtype, shape, data}: data is a DataView over a binary buffer
// (or base64 text in the standalone HTML export, decoded by the host before it gets here).

export interface Encoded {
  dtype: "float32" | "int32" | "uint32" | "int16" | "uint16" | "uint8";
  shape: number[];
  data: DataView | ArrayBuffer | Uint8Array;
}

const CTORS = {
  float32: Float32Array, int32: Int32Array, uint32: Uint32Array,
  int16: Int16Array, uint16: Uint16Array, uint8: Uint8Array,
} as const;

type Typed = Float32Array | Int32Array | Uint32Array | Int16Array | Uint16Array | Uint8Array;

function bytesOf(data: Encoded["data"]): Uint8Array {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/** A typed array view of an encoded array (copied only when the buffer is misaligned). */
export function decode<T extends Typed = Float32Array>(e: Encoded): T {
  const Ctor = CTORS[e.dtype];
  let bytes = bytesOf(e.data);
  if (bytes.byteOffset % Ctor.BYTES_PER_ELEMENT !== 0) bytes = bytes.slice();
  return new Ctor(bytes.buffer as ArrayBuffer, bytes.byteOffset, bytes.byteLength / Ctor.BYTES_PER_ELEMENT) as T;
}

/** Put binary buffers back at their paths in a message (ipywidgets' buffer_paths). */
export function putBuffers(obj: any, paths: (string | number)[][], buffers: DataView[]): void {
  paths.forEach((path, i) => {
    let o = obj;
    for (const key of path.slice(0, -1)) o = o[key];
    o[path[path.length - 1]] = buffers[i];
  });
}
