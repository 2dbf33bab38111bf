// Score an onnxforge artifact from Node.js with onnxruntime-node (issue #18).
//
//   node score.js MODEL.onnx FEEDS.json [OUT.json]
//
// FEEDS.json: {"<input>": {"type": "float32" | "int64" | "string", "dims": [rows, ...], "data": [...]}, ...}
// — one entry per model input, as `onnxforge inspect MODEL.onnx` lists them. What onnxforge artifacts promise
// every runtime: tensor outputs only (no ZipMap, no sequences), string categories as string tensors encoded
// inside the graph, table columns as [rows, 1] inputs. Writes {"<output>": {"type", "dims", "data"}} (int64 as
// decimal strings: JSON numbers cannot hold every int64).
"use strict";
const fs = require("fs");
const ort = require("onnxruntime-node");

function tensor({ type, dims, data }) {
  if (type === "int64") return new ort.Tensor("int64", BigInt64Array.from(data.map((v) => BigInt(v))), dims);
  if (type === "float32") return new ort.Tensor("float32", Float32Array.from(data), dims);
  if (type === "string") return new ort.Tensor("string", data.map(String), dims);
  throw new Error(`unsupported input type ${type}: use float32, int64 or string`);
}

function plain(t) {
  const data = t.type === "int64" ? Array.from(t.data, (v) => v.toString()) : Array.from(t.data);
  return { type: t.type, dims: t.dims, data };
}

async function main() {
  const [model, feedsPath, outPath] = process.argv.slice(2);
  if (!model || !feedsPath) {
    console.error("usage: node score.js MODEL.onnx FEEDS.json [OUT.json]");
    process.exit(2);
  }
  const spec = JSON.parse(fs.readFileSync(feedsPath, "utf8"));
  const session = await ort.InferenceSession.create(model, { intraOpNumThreads: 1 });
  const feeds = {};
  for (const name of session.inputNames) {
    if (!(name in spec)) throw new Error(`FEEDS.json has no input '${name}' (the model takes ${session.inputNames})`);
    feeds[name] = tensor(spec[name]);
  }
  const results = await session.run(feeds);
  const out = {};
  for (const name of session.outputNames) out[name] = plain(results[name]);
  const text = JSON.stringify(out);
  if (outPath) fs.writeFileSync(outPath, text);
  else process.stdout.write(text + "\n");
}

main().catch((e) => {
  console.error(`error: ${e.message}`);
  process.exit(1);
});
