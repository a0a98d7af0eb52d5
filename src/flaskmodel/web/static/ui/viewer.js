// FlaskModel results viewer: recent jobs (refreshing) and, for a series job, the label along
// the series as a coloured strip against slice position, with the selected slice's thumbnail.
"use strict";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                 "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#ad494a"];
let selectedJob = null;
let detail = null;

// With API keys on, the key is asked for once (on the first 401) and kept for this tab only.
async function authorizedFetch(url, accept) {
  const headers = {Accept: accept};
  const key = sessionStorage.getItem("flaskmodel-api-key");
  if (key) headers["X-API-Key"] = key;
  const response = await fetch(url, {headers});
  if (response.status === 401) {
    const entered = window.prompt("API key");
    if (entered) sessionStorage.setItem("flaskmodel-api-key", entered.trim());
  }
  return response;
}

async function getJson(url) {
  const response = await authorizedFetch(url, "application/json");
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

async function refreshJobs() {
  try {
    const body = await getJson("/v1/jobs?limit=50");
    const tbody = document.querySelector("#jobs tbody");
    tbody.replaceChildren(...body.jobs.map((job) => {
      const tr = document.createElement("tr");
      tr.dataset.jobId = job.job_id;
      if (job.job_id === selectedJob) tr.className = "selected";
      const progress = document.createElement("progress");
      progress.max = Math.max(job.progress.total, 1);
      progress.value = job.progress.done;
      const progressCell = cell(` ${job.progress.done}/${job.progress.total}`);
      progressCell.prepend(progress);
      tr.append(cell(job.job_id.slice(0, 8)), cell(job.kind), cell(job.model),
                cell(job.state, `state-${job.state}`), progressCell,
                cell(job.created_at.replace("T", " ").slice(0, 19)));
      tr.addEventListener("click", () => showJob(job.job_id));
      return tr;
    }));
    document.getElementById("status").textContent =
      `${body.jobs.length} recent job${body.jobs.length === 1 ? "" : "s"} · updated ${new Date().toLocaleTimeString()}`;
    if (selectedJob && detail && !["SUCCEEDED", "FAILED", "CANCELLED"].includes(detail.state)) {
      await showJob(selectedJob);
    }
  } catch (error) {
    document.getElementById("status").textContent = `cannot load jobs: ${error.message}`;
  }
}

async function showJob(jobId) {
  selectedJob = jobId;
  detail = await getJson(`/v1/jobs/${jobId}`);
  document.querySelectorAll("#jobs tbody tr").forEach((tr) => {
    tr.className = tr.dataset.jobId === jobId ? "selected" : "";
  });
  const section = document.getElementById("detail");
  section.hidden = false;
  document.getElementById("detail-title").textContent =
    `${detail.kind} job ${jobId} — ${detail.state}`;
  const result = detail.result;
  const meta = document.getElementById("detail-meta");
  if (!result || !result.slices) {
    meta.textContent = detail.error ? `${detail.error.type}: ${detail.error.message}`
                                    : `progress ${detail.progress.done}/${detail.progress.total}`;
    document.getElementById("strip-wrap").hidden = true;
    document.getElementById("slice").hidden = true;
    document.getElementById("legend").replaceChildren();
    return;
  }
  meta.textContent = `series ${result.series_uid} · ${result.model_name} v${result.model_version}` +
    ` · ${result.slices.length} slices · direction ${result.direction}`;
  document.getElementById("strip-wrap").hidden = false;
  document.getElementById("slice").hidden = false;
  drawStrip(result);
  drawLegend(result);
  selectSlice(result, Math.floor(result.slices.length / 2));
}

function drawStrip(result) {
  const canvas = document.getElementById("strip");
  const ctx = canvas.getContext("2d");
  const n = result.slices.length;
  const width = canvas.width / n;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  result.slices.forEach((slice, i) => {
    ctx.fillStyle = PALETTE[slice.label_index % PALETTE.length];
    ctx.fillRect(i * width, 0, Math.ceil(width), 46);
    if (slice.label !== slice.label_raw) {  // where the post-processor changed the raw argmax
      ctx.fillStyle = "#000";
      ctx.fillRect(i * width, 50, Math.ceil(width), 4);
    }
  });
  canvas.onclick = (event) => {
    const box = canvas.getBoundingClientRect();
    const index = Math.min(n - 1, Math.floor(((event.clientX - box.left) / box.width) * n));
    selectSlice(result, index);
  };
  const first = result.slices[0], last = result.slices[n - 1];
  document.getElementById("axis").replaceChildren(
    ...[`slice ${first.index} · z ${first.z} mm`, `slice ${last.index} · z ${last.z} mm`]
      .map((text) => { const s = document.createElement("span"); s.textContent = text; return s; }));
}

function drawLegend(result) {
  const names = result.class_names || [];
  const used = [...new Set(result.slices.map((s) => s.label_index))].sort((a, b) => a - b);
  document.getElementById("legend").replaceChildren(...used.map((index) => {
    const span = document.createElement("span");
    span.style.setProperty("--c", PALETTE[index % PALETTE.length]);
    span.textContent = names[index] || String(index);
    return span;
  }));
}

function selectSlice(result, position) {
  const slice = result.slices[position];
  const canvas = document.getElementById("strip");
  drawStrip(result);
  const ctx = canvas.getContext("2d");
  const width = canvas.width / result.slices.length;
  ctx.strokeStyle = "#000";
  ctx.lineWidth = 2;
  ctx.strokeRect(position * width + 1, 1, Math.max(width - 2, 2), 44);
  const img = document.getElementById("thumb");
  const thumbUrl = `/v1/jobs/${selectedJob}/slices/${slice.index}/thumbnail.png`;
  if (sessionStorage.getItem("flaskmodel-api-key")) {
    authorizedFetch(thumbUrl, "image/png").then((r) => r.ok ? r.blob() : null).then((blob) => {
      if (blob) img.src = URL.createObjectURL(blob);
    });
  } else {
    img.src = thumbUrl;
  }
  const top = Math.max(...slice.scores);
  const rows = [["slice", slice.index], ["instance", slice.instance_number ?? "–"],
                ["z (mm)", slice.z], ["label", slice.label], ["raw argmax", slice.label_raw],
                ["score", top.toFixed(3)], ["SOP instance", slice.sop_instance_uid]];
  document.getElementById("slice-info").replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = String(v);
    return [dt, dd];
  }));
}

refreshJobs();
setInterval(refreshJobs, 2000);
const initial = new URLSearchParams(location.search).get("job");
if (initial) showJob(initial);
