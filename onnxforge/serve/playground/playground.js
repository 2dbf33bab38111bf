// The playground: a form from the served artifact's input spec; one row scored in the browser (onnxruntime-web,
// vendored into the Python package and served by this server: no CDN) and on the server (POST /predict).
import * as ort from "./ort/ort.wasm.bundle.min.mjs";

ort.env.wasm.wasmPaths = new URL("./ort/", location.href).href;
ort.env.wasm.numThreads = 1; // no cross-origin isolation here: threads would need SharedArrayBuffer

const $ = (id) => document.getElementById(id);
const ARRAYS = { float32: Float32Array, float64: Float64Array, int32: Int32Array, int8: Int8Array,
                 uint8: Uint8Array, bool: Uint8Array };
let info, sessions = {};

function version() { return info.versions.find((v) => v.version === $("version").value); }

function keysOf(spec) { return spec.columns || [spec.column || spec.name]; }

function wide(spec) {
  const shape = spec.shape || ["batch"];
  return !spec.columns && shape.length > 1 && !(shape.length === 2 && shape[1] === 1);
}

async function buildForm() {
  const v = version();
  const example = await (await fetch(`example?version=${encodeURIComponent(v.version)}`)).json();
  const form = $("form");
  form.replaceChildren();
  for (const spec of v.inputs) {
    for (const key of keysOf(spec)) {
      const label = document.createElement("label");
      const name = document.createElement("span");
      name.textContent = `${key} (${spec.dtype || "float32"})`;
      let field;
      if (wide(spec)) {
        field = document.createElement("textarea");
        field.value = JSON.stringify(example[key]);
      } else if (spec.categories) {
        field = document.createElement("select");
        for (const c of spec.categories) field.add(new Option(String(c), String(c)));
        field.value = String(example[key]);
      } else {
        field = document.createElement("input");
        field.value = String(example[key]);
      }
      field.name = key;
      field.dataset.dtype = spec.dtype || "float32";
      field.dataset.wide = wide(spec) ? "1" : "";
      label.append(name, field);
      form.append(label);
    }
  }
}

function record() {
  const rec = {};
  for (const f of $("form").elements) {
    const dt = f.dataset.dtype;
    rec[f.name] = f.dataset.wide ? JSON.parse(f.value) : dt === "string" ? f.value
      : dt === "bool" ? f.value === "true" : Number(f.value);
  }
  return rec;
}

function tensor(spec, rec) {
  const dtype = spec.dtype || "float32";
  const keys = keysOf(spec);
  let values, shape;
  if (spec.columns) { values = keys.map((k) => rec[k]); shape = [1, keys.length]; }
  else if (wide(spec)) {
    const v = rec[keys[0]];
    const dims = [];
    for (let a = v; Array.isArray(a); a = a[0]) dims.push(a.length);
    values = [v].flat(Infinity); shape = [1, ...dims];
  } else { values = [rec[keys[0]]]; shape = (spec.shape || ["batch"]).length === 2 ? [1, 1] : [1]; }
  if (dtype === "string") return new ort.Tensor("string", values.map(String), shape);
  if (dtype === "int64") return new ort.Tensor("int64", BigInt64Array.from(values.map((x) => BigInt(x))), shape);
  return new ort.Tensor(dtype, ARRAYS[dtype].from(values.map(Number)), shape);
}

function flat(x) {
  if (x === null || x === undefined) return [];
  if (Array.isArray(x)) return x.flatMap(flat);
  if (typeof x === "object") return Object.values(x).flatMap(flat);
  return [x];
}

async function run() {
  const v = version();
  const rec = record();
  const out = { version: v.version, outputs: {}, agree: true };
  try {
    if (!sessions[v.version]) {
      const bytes = await (await fetch(`model.onnx?version=${encodeURIComponent(v.version)}`)).arrayBuffer();
      sessions[v.version] = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
    }
    const sess = sessions[v.version];
    const feeds = {};
    for (const spec of v.inputs) feeds[spec.name] = tensor(spec, rec);
    const [browser, reply] = await Promise.all([
      sess.run(feeds),
      fetch(`../predict?version=${encodeURIComponent(v.version)}`, { method: "POST",
        headers: { "Content-Type": "application/json" }, body: JSON.stringify([rec]) }).then((r) => r.json()),
    ]);
    if (reply.error) throw new Error(`server: ${reply.error}`);
    const server = reply.predictions[0];
    const body = $("results").tBodies[0];
    body.replaceChildren();
    for (const name of Object.keys(server)) {
      const b = browser[name] ? Array.from(browser[name].data, (x) => typeof x === "bigint" ? Number(x) : x) : [];
      const s = flat(server[name]);
      const stochastic = v.stochastic_outputs.includes(name);
      let diff = null, same;
      if (stochastic) same = b.length === s.length; // draws: each side draws its own
      else if (b.some((x) => typeof x === "string") || s.some((x) => typeof x === "string"))
        same = b.length === s.length && b.every((x, i) => String(x) === String(s[i]));
      else {
        diff = b.length === s.length ? Math.max(0, ...b.map((x, i) => Math.abs(x - s[i]))) : Infinity;
        same = diff <= 1e-4 + 1e-4 * Math.max(0, ...s.map(Math.abs));
      }
      out.outputs[name] = { browser: b, server: s, max_abs_diff: diff, stochastic, agree: same };
      out.agree = out.agree && same;
      const row = body.insertRow();
      for (const cell of [name, JSON.stringify(b.slice(0, 20)), JSON.stringify(server[name]).slice(0, 400),
                          stochastic ? "draws (not compared)" : diff === null ? (same ? "equal" : "differ") : diff.toExponential(2)])
        row.insertCell().textContent = cell;
    }
    $("verdict").textContent = out.agree ? "browser and server agree" : "browser and server DIFFER";
    $("verdict").className = out.agree ? "ok" : "bad";
  } catch (e) {
    out.agree = false;
    out.error = String(e && e.message || e);
    $("verdict").textContent = out.error;
    $("verdict").className = "bad";
  }
  $("result").textContent = JSON.stringify(out);
  return out;
}

info = await (await fetch("../models")).json();
$("model").textContent = info.name;
for (const v of info.versions)
  $("version").add(new Option(`${v.version}${v.stage ? " (" + v.stage + ")" : ""}`, v.version));
$("version").value = info.default_version;
$("version").addEventListener("change", buildForm);
$("run").addEventListener("click", run);
await buildForm();
if (new URLSearchParams(location.search).has("auto")) await run();
