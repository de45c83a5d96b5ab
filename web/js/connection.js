// The connection to stove: waiting for the model (with load progress), what the model panel shows about it,
// and noticing a stopped stove and reconnecting.

import * as api from "./api.js";
import { $, el, state } from "./page.js";
import { make, setStatus, toast, formatNumber } from "./ui.js";
import { updateComposer } from "./messages.js";
import { renderSettings } from "./settings.js";

/** Waits for the model, showing load progress, then loads what the page shows about it. */
export async function connect() {
  for (;;) {
    const health = await api.health();
    if (health?.ready) break;
    if (health?.error) {
      setStatus(health.error, true);
      return;
    }
    setStatus(health ? `loading ${Math.round(health.progress * 100)}%` : "cannot reach stove; retrying…", !health);
    await new Promise((resolve) => setTimeout(resolve, health ? 300 : 1000));
  }
  try {
    state.info = await api.info();
  } catch (error) {
    setStatus(error.message, true);
    return;
  }
  state.defaults = state.info.defaults || {};
  state.ready = true;
  showModel();
  renderSettings();
  updateComposer();
  el.prompt.focus();
}

/** After a lost connection: says so, retries until stove answers again, then carries on. */
export async function reconnect() {
  if (state.reconnecting) return;
  state.reconnecting = true;
  state.ready = false;
  updateComposer();
  el.banner.textContent = "Lost the connection to stove. Trying again…";
  el.banner.hidden = false;
  setStatus("disconnected", true);
  for (let wait = 500; ; wait = Math.min(wait * 2, 4000)) {
    await new Promise((resolve) => setTimeout(resolve, wait));
    const health = await api.health();
    if (health) break;
  }
  el.banner.hidden = true;
  state.reconnecting = false;
  await connect();
  toast("Connected to stove again.");
}

// Notices a stopped stove, or a model that cannot be used any more (a lost worker), while the page sits idle,
// so the person learns before typing.
setInterval(async () => {
  if (!state.ready || state.generation || state.reconnecting) return;
  const health = await api.health();
  if (!health) return reconnect();
  if (health.error) {
    state.ready = false;
    updateComposer();
    // The workers' states are new; the rest of what the panel shows stays as it was loaded.
    const info = await api.info().catch(() => null);
    if (info?.workers) state.info.workers = info.workers;
    showModel();
    setStatus(health.error, true);
  }
}, 5000);

function showModel() {
  const { model, runtime } = state.info;
  const name = model.name;
  document.title = `${name} · stove`;
  $("welcome-model").textContent = name;
  const r = runtime;
  const gpu = r.gpus.length
    ? `${r.gpus.map((g) => g.description || g.name).join(", ")} · ${r.gpu_layers} of ${r.layers} layers`
    : `none (all ${r.layers} layers on the CPU)`;
  const facts = [
    ["Name", name],
    ["Architecture", model.architecture],
    ["Parameters", `${formatNumber(model.parameters / 1e6, 1)} M`],
    ["Quantization", model.quantization],
    ["Size", `${formatNumber(model.size / 2 ** 20, 1)} MiB`],
    [
      "Context",
      `${formatNumber(r.context_size)} tokens per conversation${model.trained_context ? ` (trained ${formatNumber(model.trained_context)})` : ""}`,
    ],
    ["At once", `${r.parallel} conversation${r.parallel === 1 ? "" : "s"}`],
    [
      "CPU",
      `${r.cpu_variant ? `${r.cpu_variant} · ` : ""}${r.threads} thread${r.threads === 1 ? "" : "s"} · ${
        r.cpu_features.join(" ") || "baseline"
      }`,
    ],
    ["GPU", gpu],
    ["KV cache", `${r.kv_cache.type_k} keys, ${r.kv_cache.type_v} values · flash attention ${r.kv_cache.flash_attn}`],
    ["Speculation", speculation(r.speculation)],
    // Which model ranks the passages of attached files by meaning (and answers /v1/embeddings).
    [
      "Embeddings",
      r.embedding_model
        ? `${r.embedding_model.name} (${r.embedding_model.dimensions} dimensions)`
        : "the chat model (passages of files are ranked by their words)",
    ],
    ["Projector", senses(r.projector)],
    ...(state.info.workers?.length ? [["Workers", workers(state.info.workers, r.offload)]] : []),
    ["Loaded in", `${formatNumber(r.load_seconds, 1)} s${r.mmap ? ", mapped from the file" : ""}`],
    ["Sandbox", state.info.sandbox ? state.info.sandbox.summary : "unknown"],
    ["stove", `${state.info.stove_version} (${state.info.stove_commit})`],
  ];
  $("model-facts").replaceChildren(
    ...facts.flatMap(([term, value]) => [make("dt", { text: term }), make("dd", { text: value })]),
  );
  setStatus(`ready · ${model.quantization} · ${r.parallel} at once`);
}

/** What the projector lets the model do besides reading text, in words. */
function senses(projector) {
  if (!projector) return "none: the model reads text only";
  const what = [projector.vision && "sees pictures", projector.audio && "hears sound"].filter(Boolean).join(" and ");
  const where = projector.on_gpu ? "on the GPU" : "in main memory";
  return `${what || "reads text only"} · ${projector.kind}, ${formatNumber(projector.bytes / 2 ** 20, 1)} MiB ${where}`;
}

/** The machines lending their devices (`--worker`), what each holds, and whether it is still there. */
function workers(list, offload) {
  return list
    .map((w) => {
      const shares = (offload?.split || []).filter((s) => s.worker === w.address);
      const layers = shares.reduce((sum, s) => sum + s.layers, 0);
      const output = shares.some((s) => s.output) ? " and the output" : "";
      const state = w.state === "lost" ? `lost: ${w.error}` : "connected";
      return `${w.address} · ${layers} layers${output} · ${state}`;
    })
    .join("; ");
}

/** What `--spec` runs, in words. */
function speculation(spec) {
  if (!spec || spec.mode === "none") return "off";
  if (spec.mode === "draft") return `draft model: up to ${spec.draft_max} tokens guessed at a time`;
  return `n-gram: up to ${spec.draft_max} tokens guessed when the last ${spec.ngram} appeared before`;
}
