// Conveyor dashboard: live parts of pages and the overview charts, by polling.
// No framework and nothing from elsewhere: this file ships inside the package.
"use strict";

const POLL_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";

function visible() {
  return document.visibilityState !== "hidden";
}

async function refreshLive() {
  const live = document.querySelector("[data-live]");
  if (!live || !visible()) return;
  // Leave the page alone while the user is typing in it.
  if (live.contains(document.activeElement) && document.activeElement !== document.body) return;
  const response = await fetch(window.location.href, {
    headers: { "X-Conveyor-Fragment": "1" },
    credentials: "same-origin",
    cache: "no-store",
  });
  if (response.status === 401) {
    window.location.assign("/ui/login?next=" + encodeURIComponent(window.location.pathname));
    return;
  }
  if (!response.ok) return;
  const page = new DOMParser().parseFromString(await response.text(), "text/html");
  const fresh = page.querySelector("[data-live]");
  if (fresh) live.replaceChildren(...Array.from(fresh.childNodes).map((n) => document.importNode(n, true)));
}

function drawChart(svg, series) {
  // series: [{values: [number|null], cls: "line-a"}]; all share one y scale.
  const width = 600, height = 160, pad = 18;
  const all = series.flatMap((s) => s.values).filter((v) => v !== null && Number.isFinite(v));
  const top = Math.max(1e-9, ...all) * 1.1;
  svg.replaceChildren();
  const axis = document.createElementNS(SVG, "text");
  axis.setAttribute("x", "4");
  axis.setAttribute("y", "12");
  axis.setAttribute("class", "axis");
  axis.textContent = all.length ? "max " + formatNumber(top / 1.1) : "waiting for data";
  svg.appendChild(axis);
  for (const s of series) {
    const n = s.values.length;
    if (n < 2) continue;
    const points = [];
    s.values.forEach((v, i) => {
      if (v === null || !Number.isFinite(v)) return;
      const x = (i / (n - 1)) * width;
      const y = height - pad - (v / top) * (height - 2 * pad);
      points.push(x.toFixed(1) + "," + y.toFixed(1));
    });
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("class", "line " + s.cls);
    svg.appendChild(line);
    if (points.length === 1) {
      // A lone point draws no line: mark it.
      const [x, y] = points[0].split(",");
      const dot = document.createElementNS(SVG, "circle");
      dot.setAttribute("cx", x);
      dot.setAttribute("cy", y);
      dot.setAttribute("r", "3");
      dot.setAttribute("class", "dot " + s.cls);
      svg.appendChild(dot);
    }
  }
}

function formatNumber(v) {
  if (v >= 100) return v.toFixed(0);
  if (v >= 1) return v.toFixed(1);
  return v.toPrecision(2);
}

async function refreshCharts() {
  const throughput = document.getElementById("chart-throughput");
  const latency = document.getElementById("chart-latency");
  if (!throughput || !latency || !visible()) return;
  const response = await fetch("/ui/data/overview", { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) return;
  const data = await response.json();
  const s = data.series;
  drawChart(throughput, [{ values: s.map((p) => p.throughput), cls: "line-a" }]);
  drawChart(latency, [
    { values: s.map((p) => p.wait_p50), cls: "line-a" },
    { values: s.map((p) => p.run_p50), cls: "line-b" },
  ]);
}

function tick() {
  refreshLive().catch(() => {});
  refreshCharts().catch(() => {});
}

document.addEventListener("DOMContentLoaded", () => {
  tick();
  window.setInterval(tick, POLL_MS);
});
